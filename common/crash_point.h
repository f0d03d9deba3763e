#ifndef CKPT_COMMON_CRASH_POINT_H_
#define CKPT_COMMON_CRASH_POINT_H_

// Named points where crash tests kill the process, in the manner of
// RocksDB's TEST_SYNC_POINT. Call sites use CKPT_CRASH_POINT("name"), which
// compiles to nothing unless CKPT_CRASH_POINTS is defined: only the test
// build of the server (ckpt-server-crashtest, made when CKPT_BUILD_TESTS is
// on) has them; the ckpt-server that users run never does. There, the
// environment variable CKPT_TEST_CRASH_AT=NAME:N makes the N-th pass through
// point NAME raise SIGKILL; unarmed, a point costs one relaxed atomic load.

#include "absl/strings/string_view.h"

namespace ckpt {

/// Kills the process with SIGKILL if CKPT_TEST_CRASH_AT names this point and
/// this is the N-th pass. Points used: "save.begin", "save.chunk",
/// "upload.before_ingest", "upload.after_ingest", "commit.before_write",
/// "commit.after_write".
void CrashPoint(absl::string_view name);

}  // namespace ckpt

#ifdef CKPT_CRASH_POINTS
#define CKPT_CRASH_POINT(name) ::ckpt::CrashPoint(name)
#else
#define CKPT_CRASH_POINT(name) \
  do {                         \
  } while (0)
#endif

#endif  // CKPT_COMMON_CRASH_POINT_H_
