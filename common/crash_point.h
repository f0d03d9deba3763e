#ifndef CKPT_COMMON_CRASH_POINT_H_
#define CKPT_COMMON_CRASH_POINT_H_

// Named points where crash tests kill the process, in the manner of
// RocksDB's TEST_SYNC_POINT. Armed only by the environment variable
// CKPT_TEST_CRASH_AT=NAME:N, which makes the N-th pass through point NAME
// raise SIGKILL. Unarmed, a point costs one relaxed atomic load.

#include "absl/strings/string_view.h"

namespace ckpt {

/// Kills the process with SIGKILL if CKPT_TEST_CRASH_AT names this point and
/// this is the N-th pass. Points used: "save.begin", "save.chunk",
/// "upload.before_ingest", "upload.after_ingest", "commit.before_write",
/// "commit.after_write".
void CrashPoint(absl::string_view name);

}  // namespace ckpt

#endif  // CKPT_COMMON_CRASH_POINT_H_
