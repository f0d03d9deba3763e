#ifndef CKPT_STORAGE_ROCKSDB_STATUS_H_
#define CKPT_STORAGE_ROCKSDB_STATUS_H_

// The one place where rocksdb::Status becomes absl::Status.

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "rocksdb/status.h"

namespace ckpt::storage {

/// Converts `status` to an absl::Status whose message is
/// "<context>: <rocksdb message>". OK stays OK. Mapping:
///   NotFound -> NotFound; Corruption -> DataLoss;
///   IOError: no space / space limit -> ResourceExhausted, else Internal;
///   Busy, TryAgain, TimedOut, ShutdownInProgress -> Unavailable;
///   Aborted -> Aborted; InvalidArgument -> InvalidArgument;
///   NotSupported -> Unimplemented; memory limit -> ResourceExhausted;
///   anything else -> Internal.
absl::Status FromRocksDb(const rocksdb::Status& status, absl::string_view context);

}  // namespace ckpt::storage

#endif  // CKPT_STORAGE_ROCKSDB_STATUS_H_
