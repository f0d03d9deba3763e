// Stats and NamespaceBytes of the RocksDB store, and its test accessors.

#include <memory>
#include <mutex>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/snapshot.h"
#include "storage/codec.h"
#include "storage/rocksdb_status.h"
#include "storage/rocksdb_store.h"
#include "storage/store_core.h"

namespace ckpt::storage {

using internal::ScanIterator;
using internal::VersionContext;
using internal::View;

absl::StatusOr<StoreStats> RocksDbStore::Stats() {
  StoreStats stats;
  rocksdb::ManagedSnapshot snapshot(core_->db);
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot.snapshot();
  ro.fill_cache = false;
  {
    ScanIterator it(core_->db, core_->manifests_cf, ro, VersionNamePrefix(""),
                    PrefixSuccessor(VersionNamePrefix("")));
    std::string last_name;
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      CKPT_ASSIGN_OR_RETURN(auto key, ParseVersionKey(View(it->key())));
      auto info = DecodeVersionRecord(View(it->value()));
      if (!info.ok()) return Annotate(info.status(), VersionContext(key.first, key.second));
      ++stats.versions;
      stats.logical_bytes += info->data_bytes;
      if (stats.checkpoints == 0 || key.first != last_name) {
        ++stats.checkpoints;
        last_name = std::move(key.first);
      }
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "scanning versions"));
  }
  {
    std::unique_ptr<rocksdb::Iterator> it(core_->db->NewIterator(ro, core_->refs_cf));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto value = DecodeRefValue(View(it->value()));
      if (!value.ok()) return Annotate(value.status(), "scanning chunk refs");
      if (value->refcount == 0) {
        stats.garbage_bytes += value->length;
        continue;
      }
      ++stats.chunks;
      stats.stored_bytes += value->length;
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "scanning chunk refs"));
  }
  for (rocksdb::ColumnFamilyHandle* cf : core_->handles) {
    uint64_t size = 0;
    if (core_->db->GetIntProperty(cf, rocksdb::DB::Properties::kTotalSstFilesSize, &size)) {
      stats.disk_bytes += size;
    }
  }
  rocksdb::VectorLogPtr wals;
  if (core_->db->GetSortedWalFiles(wals).ok()) {
    for (const auto& wal : wals) stats.disk_bytes += wal->SizeFileBytes();
  }
  absl::flat_hash_set<uint64_t> live;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    stats.active_uploads = core_->live_uploads.size();
    live = core_->live_uploads;
  }
  // Uploads that died before their commit: what their pending records say
  // they wrote (live ones may still commit).
  ScanIterator it(core_->db, core_->default_cf, ro, std::string(kPendingPrefix),
                  PrefixSuccessor(kPendingPrefix));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    auto id = ParsePendingKey(View(it->key()));
    auto record = DecodePendingRecord(View(it->value()));
    if (id.ok() && record.ok() && !live.contains(*id)) stats.garbage_bytes += record->bytes;
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "scanning pending uploads"));
  return stats;
}

uint64_t RocksDbStore::NamespaceBytes(absl::string_view ns) { return core_->UsageOf(ns); }

absl::StatusOr<uint64_t> RocksDbStore::CountChunkKeys() {
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(core_->db->NewIterator(ro, core_->chunks_cf));
  uint64_t n = 0;
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++n;
  CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "counting chunks"));
  return n;
}

absl::StatusOr<uint64_t> RocksDbStore::ChunkIdOf(absl::string_view name, const Digest& digest) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  std::string value;
  rocksdb::Status s = core_->db->Get(rocksdb::ReadOptions(), core_->refs_cf,
                                     RefKey(NamespaceOf(name), digest), &value);
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, absl::StrCat("chunk ", digest.Hex())));
  CKPT_ASSIGN_OR_RETURN(RefValue ref, DecodeRefValue(value));
  return ref.chunk_id;
}

}  // namespace ckpt::storage
