// Starting uploads and committing versions: one WriteBatch per commit
// (refcounts, version record, manifest, counter, tags, pending records).

#include <algorithm>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/crash_point.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "rocksdb/write_batch.h"
#include "storage/codec.h"
#include "storage/rocksdb_status.h"
#include "storage/rocksdb_store.h"
#include "storage/rocksdb_upload.h"
#include "storage/store_core.h"

namespace ckpt::storage {

using internal::CheckChunkLengths;
using internal::CheckTagCount;
using internal::ChunkNeverUploaded;
using internal::DistinctDigests;
using internal::MultiGetRefs;
using internal::NewVersionInfo;
using internal::Quote;
using internal::RocksDbUpload;
using internal::ValidateCommitSpec;
using internal::VersionContext;
using internal::WithLatest;

absl::StatusOr<std::unique_ptr<Upload>> RocksDbStore::BeginUpload(absl::string_view name) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    id = core_->next_upload_id++;
    core_->live_uploads.insert(id);
  }
  return std::unique_ptr<Upload>(
      std::make_unique<RocksDbUpload>(core_, std::string(NamespaceOf(name)), id));
}

absl::StatusOr<VersionInfo> RocksDbStore::Commit(CommitSpec spec,
                                                 absl::Span<Upload* const> uploads) {
  const std::string& name = spec.name;
  CKPT_RETURN_IF_ERROR(ValidateCommitSpec(spec, core_->options.max_chunk_bytes));
  const std::string ns(NamespaceOf(name));

  std::vector<RocksDbUpload*> ups;
  for (Upload* u : uploads) {
    auto* up = dynamic_cast<RocksDbUpload*>(u);
    if (up == nullptr || up->core() != core_.get()) {
      return absl::InvalidArgumentError("upload does not belong to this store");
    }
    if (up->ns() != ns) {
      return absl::InvalidArgumentError(absl::StrCat("upload for namespace ", Quote(up->ns()),
                                                     " cannot commit into ", Quote(name)));
    }
    if (up->state() == RocksDbUpload::State::kCommitted) {
      return absl::FailedPreconditionError("upload was already committed");
    }
    if (std::find(ups.begin(), ups.end(), up) == ups.end()) ups.push_back(up);
  }
  for (RocksDbUpload* up : ups) {
    CKPT_RETURN_IF_ERROR(Annotate(up->Seal(), "sealing upload"));
  }

  const std::vector<std::pair<Digest, size_t>> digests = DistinctDigests(spec.tree);
  std::vector<std::string> keys;
  keys.reserve(digests.size());
  for (const auto& [d, node] : digests) keys.push_back(RefKey(ns, d));

  std::lock_guard<std::mutex> commit_lock(core_->commit_mu);
  // The uploads' own lookups answer for the digests they asked about when
  // no refs write landed since; only the rest is read here.
  std::vector<std::optional<RefValue>> refs(digests.size());
  {
    const uint64_t generation = core_->refs_generation.load(std::memory_order_acquire);
    std::vector<const absl::flat_hash_map<Digest, std::optional<RefValue>>*> cached;
    for (const RocksDbUpload* up : ups) {
      if (const auto* lookups = up->LookupsValidAt(generation)) cached.push_back(lookups);
    }
    std::vector<size_t> unknown;
    for (size_t i = 0; i < digests.size(); ++i) {
      bool known = false;
      for (const auto* lookups : cached) {
        auto it = lookups->find(digests[i].first);
        if (it == lookups->end()) continue;
        refs[i] = it->second;
        known = true;
        break;
      }
      if (!known) unknown.push_back(i);
    }
    std::vector<std::string> unknown_keys;
    unknown_keys.reserve(unknown.size());
    for (size_t i : unknown) unknown_keys.push_back(keys[i]);
    std::vector<std::optional<RefValue>> read;
    CKPT_RETURN_IF_ERROR(Annotate(MultiGetRefs(*core_, rocksdb::ReadOptions(), unknown_keys, &read),
                                  absl::StrCat("checkpoint ", Quote(name))));
    for (size_t j = 0; j < unknown.size(); ++j) refs[unknown[j]] = std::move(read[j]);
  }

  rocksdb::WriteBatch batch;
  uint64_t new_bytes = 0;
  uint64_t added_bytes = 0;  // new_bytes plus unreferenced chunks referenced again
  absl::flat_hash_map<Digest, uint64_t> lengths;        // Each digest's stored length.
  std::vector<std::string> ref_values(digests.size());  // encoded, by digests' index
  std::vector<std::pair<Digest, internal::ChunkLocations::Location>> locations;
  locations.reserve(digests.size());
  // Written chunks that become the stored copy; every other one is garbage.
  absl::flat_hash_set<std::pair<const RocksDbUpload*, Digest>> kept;
  for (size_t i = 0; i < digests.size(); ++i) {
    const auto& [d, node] = digests[i];
    RefValue value;
    if (refs[i].has_value()) {
      value = *refs[i];
      if (value.refcount == 0) added_bytes += value.length;
      ++value.refcount;
    } else {
      const RocksDbUpload* owner = nullptr;
      for (const RocksDbUpload* up : ups) {
        auto it = up->written().find(d);
        if (it != up->written().end()) {
          owner = up;
          value = RefValue{it->second.chunk_id, it->second.length, 1};
          break;
        }
      }
      if (owner == nullptr) return ChunkNeverUploaded(spec.tree, node, d);
      kept.insert({owner, d});
      new_bytes += value.length;
      added_bytes += value.length;
    }
    lengths[d] = value.length;
    ref_values[i] = EncodeRefValue(value);
    if (value.length < kPinnedReadBytes) {  // what loads read by location (rocksdb_reads.cc)
      locations.emplace_back(d, internal::ChunkLocations::Location{value.chunk_id, value.length});
    }
  }
  // Written in key order: with the refs memtable's insert hint
  // (rocksdb_open.cc) each entry's place is found from the last one's, not
  // from the top of the skip list (a 20,000-tensor commit's memtable inserts
  // cost ~40 % less).
  std::vector<size_t> order(digests.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return keys[a] < keys[b]; });
  for (size_t i : order) batch.Put(core_->refs_cf, keys[i], ref_values[i]);
  // Every use of a chunk must agree with its stored length.
  CKPT_RETURN_IF_ERROR(CheckChunkLengths(spec.tree, lengths));
  CKPT_RETURN_IF_ERROR(CheckQuota(core_->options, name, core_->UsageOf(ns), added_bytes));
  // Chunks the uploads wrote that the version does not keep are garbage:
  // unreachable once the pending records go. They stay in their files for
  // CollectGarbage (a tombstone here would later drag unrelated chunk files
  // into a compaction).
  for (const RocksDbUpload* up : ups) {
    if (up->pending_written()) batch.Delete(core_->default_cf, PendingKey(up->id()));
  }

  if (!spec.tags.empty()) {
    CKPT_RETURN_IF_ERROR(CheckTagCount(*core_, rocksdb::ReadOptions(), name, spec.tags));
  }
  // The version number: never reused, even after deletes.
  uint64_t version = 1;
  {
    std::string value;
    rocksdb::Status s =
        core_->db->Get(rocksdb::ReadOptions(), core_->manifests_cf, CounterKey(name), &value);
    if (!s.IsNotFound()) {
      CKPT_RETURN_IF_ERROR(FromRocksDb(s, absl::StrCat("checkpoint ", Quote(name))));
      auto next = DecodeBigEndian64(value);
      if (!next.ok()) {
        return Annotate(next.status(),
                        absl::StrCat("checkpoint ", Quote(name), " version counter"));
      }
      version = *next;
    }
  }

  VersionInfo info = NewVersionInfo(spec, version, new_bytes);

  batch.Put(core_->manifests_cf, VersionKey(name, version), EncodeVersionRecord(info));
  batch.Put(core_->manifests_cf, ManifestKey(name, version), EncodeTree(spec.tree));
  batch.Put(core_->manifests_cf, CounterKey(name), EncodeBigEndian64(version + 1));
  for (const std::string& tag : spec.tags) {
    batch.Put(core_->tags_cf, TagKey(name, tag), EncodeBigEndian64(version));
  }
  CKPT_CRASH_POINT("commit.before_write");
  CKPT_RETURN_IF_ERROR(FromRocksDb(core_->WriteRefs(core_->CommitWriteOptions(), &batch),
                                   VersionContext(name, version)));
  CKPT_CRASH_POINT("commit.after_write");
  core_->AddUsage(ns, added_bytes, 0);
  core_->locations.Add(ns, locations);
  for (RocksDbUpload* up : ups) up->MarkCommitted();
  info.tags = WithLatest(std::move(spec.tags), /*is_latest=*/true);
  return info;
}

}  // namespace ckpt::storage
