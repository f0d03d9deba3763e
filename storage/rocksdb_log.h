#ifndef CKPT_STORAGE_ROCKSDB_LOG_H_
#define CKPT_STORAGE_ROCKSDB_LOG_H_

// Internal to the RocksDB store: the info log every database the store opens
// writes to. RocksDB's own file logger cannot live on a full disk: after one
// failed write to LOG, its next line trips an assertion in Debian's build
// (assertions on) and the whole server aborts. This one writes each line
// with write(2) and drops a line the disk has no room for.

#include <memory>
#include <string>

#include "rocksdb/env.h"

namespace ckpt::storage::internal {

/// A logger that appends to `<dir>/LOG`. An existing LOG becomes
/// `LOG.old.<microseconds>` first (RocksDB's names, so its tools find them),
/// as does the live file once it passes `max_file_bytes`; only the newest
/// `keep_files - 1` old files are kept. Lines that cannot be written (a full
/// disk, a failing one) are dropped: the log is for people, the store never
/// depends on it. Never fails: a LOG that cannot be opened drops every line.
std::shared_ptr<rocksdb::Logger> OpenRocksDbLog(const std::string& dir, int keep_files,
                                                uint64_t max_file_bytes);

/// A logger that drops every line (databases the store opens only to read,
/// such as a backup it checks).
std::shared_ptr<rocksdb::Logger> DiscardingRocksDbLog();

}  // namespace ckpt::storage::internal

#endif  // CKPT_STORAGE_ROCKSDB_LOG_H_
