// Reads of the RocksDB store: versions by number or tag, trees, chunks and
// the paged listings of checkpoints and versions, each from one snapshot.

#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "rocksdb/snapshot.h"
#include "storage/codec.h"
#include "storage/rocksdb_status.h"
#include "storage/rocksdb_store.h"
#include "storage/store_core.h"

namespace ckpt::storage {

using internal::CheckpointNotFound;
using internal::LatestVersion;
using internal::Quote;
using internal::ReadTree;
using internal::ReadVersionRecord;
using internal::ScanIterator;
using internal::TagsByVersion;
using internal::VersionContext;
using internal::View;
using internal::WithLatest;

absl::StatusOr<VersionInfo> RocksDbStore::GetVersion(absl::string_view name,
                                                     const VersionSelector& selector) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  rocksdb::ManagedSnapshot snapshot(core_->db);
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot.snapshot();

  CKPT_ASSIGN_OR_RETURN(uint64_t latest, LatestVersion(*core_, ro, name));
  uint64_t version = selector.version;
  if (!selector.tag.empty()) {
    CKPT_RETURN_IF_ERROR(ValidateTag(selector.tag));
    if (selector.tag == kLatestTag) {
      version = 0;
    } else {
      std::string value;
      rocksdb::Status s = core_->db->Get(ro, core_->tags_cf, TagKey(name, selector.tag), &value);
      if (s.IsNotFound()) {
        if (latest == 0) return CheckpointNotFound(name);
        return internal::TagNotFound(name, selector.tag);
      }
      CKPT_RETURN_IF_ERROR(FromRocksDb(s, absl::StrCat("reading tag ", Quote(selector.tag))));
      auto tagged = DecodeBigEndian64(value);
      if (!tagged.ok()) {
        return Annotate(tagged.status(),
                        absl::StrCat("tag ", Quote(selector.tag), " of ", Quote(name)));
      }
      version = *tagged;
    }
  }
  if (version == 0) {
    if (latest == 0) return CheckpointNotFound(name);
    version = latest;
  }
  CKPT_ASSIGN_OR_RETURN(VersionInfo info, ReadVersionRecord(*core_, ro, name, version));
  CKPT_ASSIGN_OR_RETURN(auto tags, TagsByVersion(*core_, ro, name));
  info.tags = WithLatest(std::move(tags[version]), version == latest);
  return info;
}

absl::StatusOr<Tree> RocksDbStore::GetTree(absl::string_view name, uint64_t version) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  return ReadTree(*core_, rocksdb::ReadOptions(), name, version);
}

absl::Status RocksDbStore::ReadChunk(absl::string_view name, const Digest& digest,
                                     std::string* out) {
  CKPT_ASSIGN_OR_RETURN(SharedBytes chunk, ReadSharedChunk(name, digest));
  out->assign(chunk.bytes.data(), chunk.bytes.size());
  return absl::OkStatus();
}

namespace {

// A read's snapshot, and the iterator left on a chunk read without a copy:
// the iterator alone keeps the chunk's bytes valid (it is never moved); the
// snapshot is let go as soon as the chunk is found, so that a load held by
// a slow client does not keep deleted chunks from being collected. Holds
// the StoreCore: gRPC may release the bytes after the store is closed.
struct PinnedRead {
  explicit PinnedRead(std::shared_ptr<internal::StoreCore> core)
      : core(std::move(core)), snapshot(this->core->db->GetSnapshot()) {}
  ~PinnedRead() {
    it.reset();
    ReleaseSnapshot();
  }
  PinnedRead(const PinnedRead&) = delete;
  PinnedRead& operator=(const PinnedRead&) = delete;

  void ReleaseSnapshot() {
    if (snapshot != nullptr) core->db->ReleaseSnapshot(snapshot);
    snapshot = nullptr;
  }

  const std::shared_ptr<internal::StoreCore> core;
  const rocksdb::Snapshot* snapshot;
  std::unique_ptr<rocksdb::Iterator> it;
};

}  // namespace

absl::StatusOr<Store::SharedBytes> RocksDbStore::ReadSharedChunk(absl::string_view name,
                                                                 const Digest& digest) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  absl::string_view ns = NamespaceOf(name);
  // One snapshot for both reads: a concurrent GC cannot remove the chunk
  // between them.
  const uint64_t forgets = core_->locations.forgets();  // before the snapshot
  auto pinned = std::make_shared<PinnedRead>(core_);
  rocksdb::ReadOptions ro;
  ro.snapshot = pinned->snapshot;
  std::string ref_bytes;
  rocksdb::Status s = core_->db->Get(ro, core_->refs_cf, RefKey(ns, digest), &ref_bytes);
  if (s.IsNotFound()) {
    return internal::ChunkNotFound(ns, digest);
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, absl::StrCat("chunk ", digest.Hex())));
  auto ref = DecodeRefValue(ref_bytes);
  if (!ref.ok()) return Annotate(ref.status(), absl::StrCat("chunk ", digest.Hex()));

  ro.fill_cache = false;
  // The digest check below covers every byte with a stronger checksum than
  // the block's: checking both would read each chunk twice.
  ro.verify_checksums = false;
  // A large chunk is read through an iterator left where it found the
  // chunk: its value then stays in the memory-mapped chunk file, not
  // copied, for as long as the iterator (holding the snapshot and the files
  // it reads) is kept. A small one is copied: an iterator costs more.
  const std::string key = ChunkKey(ref->chunk_id);
  if (ref->length >= kPinnedReadBytes) {
    ro.background_purge_on_iterator_cleanup = true;  // see ReadSharedChunks
    pinned->it.reset(core_->db->NewIterator(ro, core_->chunks_cf));
    pinned->it->Seek(key);
    if (pinned->it->Valid() && pinned->it->key() == key) {
      pinned->ReleaseSnapshot();
      const rocksdb::Slice value = pinned->it->value();
      const absl::string_view bytes(value.data(), value.size());
      CKPT_RETURN_IF_ERROR(internal::VerifyChunkBytes(digest, ref->length, bytes));
      return SharedBytes{std::move(pinned), bytes};
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(pinned->it->status(), absl::StrCat("chunk ", digest.Hex())));
    s = rocksdb::Status::NotFound();
  }
  auto value = std::make_shared<std::string>();
  if (ref->length < kPinnedReadBytes) s = core_->db->Get(ro, core_->chunks_cf, key, value.get());
  if (s.IsNotFound()) {
    // A collection may have removed it since the snapshot if the last
    // version using it was just deleted: then it is simply gone.
    std::string now;
    rocksdb::Status again =
        core_->db->Get(rocksdb::ReadOptions(), core_->refs_cf, RefKey(ns, digest), &now);
    if (again.IsNotFound()) {
      return internal::ChunkNotFound(ns, digest);
    }
    return absl::DataLossError(
        absl::StrCat("chunk ", digest.Hex(), " is missing (chunk id ", ref->chunk_id, ")"));
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, absl::StrCat("chunk ", digest.Hex())));
  const absl::string_view bytes(*value);
  CKPT_RETURN_IF_ERROR(internal::VerifyChunkBytes(digest, ref->length, bytes));
  // Where ReadSharedChunks will find it next time (it came here when it had
  // no location, or a stale one).
  const std::pair<Digest, internal::ChunkLocations::Location> found{digest,
                                                                    {ref->chunk_id, ref->length}};
  core_->locations.Add(ns, {&found, 1}, forgets);
  return SharedBytes{std::move(value), bytes};
}

std::vector<absl::StatusOr<Store::SharedBytes>> RocksDbStore::ReadSharedChunks(
    absl::string_view name, absl::Span<const Digest> digests) {
  std::vector<absl::StatusOr<SharedBytes>> out(digests.size(), absl::UnknownError("not read"));
  if (absl::Status valid = ValidateName(name); !valid.ok()) {
    for (auto& result : out) result = valid;
    return out;
  }
  const absl::string_view ns = NamespaceOf(name);
  // Small chunks: where they are, from the locations of recent commits and
  // reads or else from their refs entries (one batched lookup), then their
  // bytes through one iterator that keeps every block it read pinned (in
  // the memory-mapped chunk files: nothing is copied) for as long as it
  // lives, from one snapshot. A location is a hint (chunk_locations.h): the
  // bytes read are checked against the digest. Large ones, and any small one
  // not read that way (missing, damaged, moved, a read error), go through
  // ReadSharedChunk, which says precisely what is wrong.
  using Location = internal::ChunkLocations::Location;
  // In this order (see ChunkLocations): the count before the snapshot, the
  // locations after it.
  const uint64_t forgets = core_->locations.forgets();
  auto pinned = std::make_shared<PinnedRead>(core_);
  rocksdb::ReadOptions ro;
  ro.snapshot = pinned->snapshot;
  std::vector<std::optional<Location>> where = core_->locations.Find(ns, digests);
  std::vector<size_t> unknown;
  std::vector<std::string> ref_keys;
  for (size_t i = 0; i < digests.size(); ++i) {
    if (where[i].has_value()) continue;
    unknown.push_back(i);
    ref_keys.push_back(RefKey(ns, digests[i]));
  }
  std::vector<std::optional<RefValue>> refs;
  if (!unknown.empty() && internal::MultiGetRefs(*core_, ro, ref_keys, &refs).ok()) {
    std::vector<std::pair<Digest, Location>> found;
    for (size_t j = 0; j < unknown.size(); ++j) {
      if (!refs[j].has_value() || refs[j]->length >= kPinnedReadBytes) continue;
      where[unknown[j]] = Location{refs[j]->chunk_id, refs[j]->length};
      found.emplace_back(digests[unknown[j]], *where[unknown[j]]);
    }
    core_->locations.Add(ns, found, forgets);
  }
  std::vector<std::pair<std::string, size_t>> small;  // (chunk key, index into digests)
  for (size_t i = 0; i < digests.size(); ++i) {
    if (where[i].has_value() && where[i]->length < kPinnedReadBytes) {
      small.emplace_back(ChunkKey(where[i]->chunk_id), i);
    }
  }
  if (!small.empty()) {
    ro.fill_cache = false;
    ro.verify_checksums = false;  // the digest covers every byte (see ReadSharedChunk)
    ro.pin_data = true;
    // The last holder may be a gRPC thread: deleting the files the iterator
    // kept (gc dropped them meanwhile) is left to RocksDB's own threads.
    ro.background_purge_on_iterator_cleanup = true;
    std::sort(small.begin(), small.end());  // forward seeks
    pinned->it.reset(core_->db->NewIterator(ro, core_->chunks_cf));
    bool placed = false;
    for (const auto& [key, i] : small) {
      // A save's chunks have consecutive ids, and a load asks for them in
      // order: the next key is most often the iterator's next entry, which
      // Next reaches without the binary searches of a Seek.
      if (placed && pinned->it->Valid()) pinned->it->Next();
      if (!placed || !pinned->it->Valid() || pinned->it->key() != key) pinned->it->Seek(key);
      placed = true;
      if (!pinned->it->Valid() || pinned->it->key() != key) continue;
      const rocksdb::Slice value = pinned->it->value();
      const absl::string_view bytes(value.data(), value.size());
      if (bytes.size() == where[i]->length &&
          internal::VerifyChunkBytes(digests[i], where[i]->length, bytes).ok()) {
        out[i] = SharedBytes{pinned, bytes};
      }
    }
  }
  pinned->ReleaseSnapshot();  // the iterator keeps the files it read
  for (size_t i = 0; i < digests.size(); ++i) {
    if (!out[i].ok()) out[i] = ReadSharedChunk(name, digests[i]);
  }
  return out;
}

absl::StatusOr<std::vector<CheckpointSummary>> RocksDbStore::ListCheckpoints(
    absl::string_view prefix, absl::string_view start_after, size_t limit) {
  CKPT_RETURN_IF_ERROR(ValidatePrefix(prefix));
  std::string lower = VersionNamePrefix(prefix);
  std::string seek = lower;
  if (!start_after.empty()) seek = std::max(seek, VersionKeysAfter(start_after));
  rocksdb::ManagedSnapshot snapshot(core_->db);
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot.snapshot();
  ScanIterator it(core_->db, core_->manifests_cf, ro, lower, PrefixSuccessor(lower));

  std::vector<CheckpointSummary> out;
  std::optional<CheckpointSummary> current;
  std::string last_record;
  auto finish = [&]() -> absl::Status {
    auto info = DecodeVersionRecord(last_record);
    if (!info.ok()) {
      return Annotate(info.status(), VersionContext(current->name, current->latest_version));
    }
    current->latest_create_time_ms = info->create_time_ms;
    out.push_back(std::move(*current));
    current.reset();
    return absl::OkStatus();
  };
  for (it->Seek(seek); it->Valid(); it->Next()) {
    CKPT_ASSIGN_OR_RETURN(auto key, ParseVersionKey(View(it->key())));
    if (!current.has_value() || current->name != key.first) {
      if (current.has_value()) CKPT_RETURN_IF_ERROR(finish());
      if (limit != 0 && out.size() >= limit) break;
      current = CheckpointSummary{key.first, 0, 0, 0};
    }
    ++current->num_versions;
    current->latest_version = key.second;
    last_record = it->value().ToString();
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "listing checkpoints"));
  if (current.has_value()) CKPT_RETURN_IF_ERROR(finish());
  return out;
}

absl::StatusOr<std::vector<VersionInfo>> RocksDbStore::ListVersions(absl::string_view name,
                                                                    uint64_t after, size_t limit) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  rocksdb::ManagedSnapshot snapshot(core_->db);
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot.snapshot();
  CKPT_ASSIGN_OR_RETURN(uint64_t latest, LatestVersion(*core_, ro, name));
  if (latest == 0) return CheckpointNotFound(name);
  CKPT_ASSIGN_OR_RETURN(auto tags, TagsByVersion(*core_, ro, name));
  std::vector<VersionInfo> out;
  if (after == std::numeric_limits<uint64_t>::max()) return out;
  std::string prefix = VersionPrefix(name);
  ScanIterator it(core_->db, core_->manifests_cf, ro, VersionKey(name, after + 1),
                  PrefixSuccessor(prefix));
  for (it->SeekToFirst(); it->Valid() && out.size() < limit; it->Next()) {
    CKPT_ASSIGN_OR_RETURN(auto key, ParseVersionKey(View(it->key())));
    auto info = DecodeVersionRecord(View(it->value()));
    if (!info.ok()) return Annotate(info.status(), VersionContext(name, key.second));
    info->name = std::string(name);
    info->version = key.second;
    info->tags = WithLatest(std::move(tags[key.second]), key.second == latest);
    out.push_back(std::move(*info));
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "listing versions"));
  return out;
}

}  // namespace ckpt::storage
