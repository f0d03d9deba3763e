// Backup: a RocksDB checkpoint of the whole store, opened read-only
// afterwards to check it and count its versions.

#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/utilities/checkpoint.h"
#include "storage/codec.h"
#include "storage/rocksdb_log.h"
#include "storage/rocksdb_status.h"
#include "storage/rocksdb_store.h"
#include "storage/store_core.h"

namespace ckpt::storage {

namespace fs = std::filesystem;

using internal::FsError;
using internal::ScanIterator;

absl::StatusOr<BackupInfo> RocksDbStore::Backup(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    return absl::AlreadyExistsError(absl::StrCat("backup directory ", dir, " already exists"));
  }
  rocksdb::Checkpoint* raw = nullptr;
  CKPT_RETURN_IF_ERROR(
      FromRocksDb(rocksdb::Checkpoint::Create(core_->db, &raw), "starting a backup"));
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  // log_size_for_flush 0: memtables are flushed first, so the copy holds no
  // WAL to replay and opens like any store.
  rocksdb::Status s = checkpoint->CreateCheckpoint(dir, /*log_size_for_flush=*/0);
  if (!s.ok()) {
    fs::remove_all(dir, ec);  // RocksDB leaves a "<dir>.tmp" on some failures
    fs::remove_all(dir + ".tmp", ec);
    return FromRocksDb(s, absl::StrCat("writing backup ", dir));
  }
  BackupInfo info;
  info.path = dir;
  info.name = fs::path(dir).filename().string();
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    ++info.files;
    info.bytes += e.file_size();
  }
  if (ec) return FsError(ec, absl::StrCat("listing backup ", dir));
  // Open the copy read-only: it must open, and its versions are counted.
  rocksdb::DBOptions db_options;
  db_options.info_log = internal::DiscardingRocksDbLog();  // no LOG written into the copy
  std::vector<std::string> names;
  CKPT_RETURN_IF_ERROR(FromRocksDb(rocksdb::DB::ListColumnFamilies(db_options, dir, &names),
                                   absl::StrCat("reading backup ", dir)));
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const std::string& name : names) families.emplace_back(name, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* copy = nullptr;
  CKPT_RETURN_IF_ERROR(
      FromRocksDb(rocksdb::DB::OpenForReadOnly(db_options, dir, families, &handles, &copy),
                  absl::StrCat("opening backup ", dir)));
  std::unique_ptr<rocksdb::DB> owned(copy);
  absl::Status counted;
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] != kManifestsFamily) continue;
    ScanIterator it(copy, handles[i], rocksdb::ReadOptions(), VersionNamePrefix(""),
                    PrefixSuccessor(VersionNamePrefix("")));
    for (it->SeekToFirst(); it->Valid(); it->Next()) ++info.versions;
    counted = FromRocksDb(it->status(), absl::StrCat("counting the versions of backup ", dir));
  }
  for (rocksdb::ColumnFamilyHandle* h : handles)
    copy->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  owned.reset();
  CKPT_RETURN_IF_ERROR(counted);
  return info;
}

}  // namespace ckpt::storage
