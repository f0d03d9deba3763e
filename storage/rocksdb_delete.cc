// Deleting a version: its records, its tags (with force) and one reference
// of each of its chunks, in one batch that may use the reserved disk space.

#include <algorithm>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "rocksdb/write_batch.h"
#include "storage/codec.h"
#include "storage/rocksdb_status.h"
#include "storage/rocksdb_store.h"
#include "storage/store_core.h"

namespace ckpt::storage {

using internal::DistinctDigests;
using internal::MultiGetRefs;
using internal::Quote;
using internal::ReadTree;
using internal::ReadVersionRecord;
using internal::StoreCore;
using internal::TaggedVersion;
using internal::TagsByVersion;
using internal::VersionContext;

absl::StatusOr<uint64_t> RocksDbStore::DeleteVersion(absl::string_view name, uint64_t version,
                                                     bool force) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  std::lock_guard<std::mutex> commit_lock(core_->commit_mu);
  rocksdb::ReadOptions ro;
  CKPT_RETURN_IF_ERROR(ReadVersionRecord(*core_, ro, name, version).status());
  CKPT_ASSIGN_OR_RETURN(Tree tree, ReadTree(*core_, ro, name, version));
  CKPT_ASSIGN_OR_RETURN(auto tags, TagsByVersion(*core_, ro, name));
  const std::vector<std::string>& own_tags = tags[version];
  if (!own_tags.empty() && !force) {
    return TaggedVersion(name, version, own_tags);
  }

  const std::string ns(NamespaceOf(name));
  std::vector<std::string> keys;
  for (const auto& [d, node] : DistinctDigests(tree)) keys.push_back(RefKey(ns, d));
  // In key order, as Commit writes them (the memtable's inserts are cheaper).
  std::sort(keys.begin(), keys.end());
  std::vector<std::optional<RefValue>> refs;
  CKPT_RETURN_IF_ERROR(
      Annotate(MultiGetRefs(*core_, ro, keys, &refs), VersionContext(name, version)));

  rocksdb::WriteBatch batch;
  uint64_t unreferenced = 0;
  uint64_t released_bytes = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    // A missing entry means a damaged store; deleting the version must
    // still work, so it is skipped.
    if (!refs[i].has_value() || refs[i]->refcount == 0) continue;
    RefValue value = *refs[i];
    if (--value.refcount == 0) {
      ++unreferenced;
      released_bytes += value.length;
    }
    batch.Put(core_->refs_cf, keys[i], EncodeRefValue(value));
  }
  batch.Delete(core_->manifests_cf, VersionKey(name, version));
  batch.Delete(core_->manifests_cf, ManifestKey(name, version));
  for (const std::string& tag : own_tags) batch.Delete(core_->tags_cf, TagKey(name, tag));
  CKPT_RETURN_IF_ERROR(FromRocksDb(
      core_->WriteRefs(core_->CommitWriteOptions(), &batch, StoreCore::Room::kMayUseReserve),
      absl::StrCat("deleting ", VersionContext(name, version))));
  core_->AddUsage(ns, 0, released_bytes);
  return unreferenced;
}

}  // namespace ckpt::storage
