#include "storage/rocksdb_store.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/crash_point.h"
#include "common/errno_status.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "rocksdb/cache.h"
#include "rocksdb/convenience.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/snapshot.h"
#include "rocksdb/sst_file_writer.h"
#include "rocksdb/table.h"
#include "rocksdb/utilities/checkpoint.h"
#include "rocksdb/write_batch.h"
#include "storage/codec.h"
#include "storage/rocksdb_status.h"

namespace ckpt::storage {

namespace fs = std::filesystem;

namespace internal {

// State shared by the store and its live uploads. The database stays open as
// long as either holds it.
struct StoreCore {
  StoreOptions options;
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::ColumnFamilyHandle* default_cf = nullptr;
  rocksdb::ColumnFamilyHandle* chunks_cf = nullptr;
  rocksdb::ColumnFamilyHandle* refs_cf = nullptr;
  rocksdb::ColumnFamilyHandle* manifests_cf = nullptr;
  rocksdb::ColumnFamilyHandle* tags_cf = nullptr;
  // Options an SstFileWriter needs to write files the chunks CF accepts.
  rocksdb::Options chunk_file_options;
  rocksdb::EnvOptions chunk_env_options;
  std::string ingest_dir;

  // Serializes every read-modify-write of refs, manifests and tags (Commit,
  // DeleteVersion, SetTag, DeleteTag, CollectGarbage). Readers take none.
  std::mutex commit_mu;
  // Bumped under commit_mu after every batch that writes the refs CF. An
  // upload that read it before its refs lookups, and finds it unchanged at
  // its commit, knows those lookups are still exact: no refs write landed
  // since, so the commit need not read the same entries again.
  std::atomic<uint64_t> refs_generation{0};

  // Whether a metadata write may use the reserved disk space: only writes
  // that lead to freeing space (deletes, gc) do.
  enum class Room { kNormal, kMayUseReserve };

  // Every metadata write goes through here. A write error (a full disk)
  // stops RocksDB's writes until it recovers: its SstFileManager resumes by
  // itself once the largest memtable fits in the free space, looking every
  // few seconds, and a manual Resume() answers Busy meanwhile. A write that
  // may use the reserve drops the reserve file and waits for that recovery
  // (up to kRecoveryWait); others try one Resume() and give up.
  rocksdb::Status Write(const rocksdb::WriteOptions& write_options, rocksdb::WriteBatch* batch,
                        Room room = Room::kNormal) {
    rocksdb::Status s = db->Write(write_options, batch);
    if (s.ok() || !(s.IsNoSpace() || s.IsIOError())) return s;
    if (room == Room::kNormal) {
      return db->Resume().ok() ? db->Write(write_options, batch) : s;
    }
    DropReserve();
    const absl::Time deadline = absl::Now() + kRecoveryWait;
    do {
      if (db->Resume().ok()) {
        rocksdb::Status again = db->Write(write_options, batch);
        if (again.ok() || !(again.IsNoSpace() || again.IsIOError())) return again;
        s = again;
      }
      absl::SleepFor(absl::Milliseconds(100));
    } while (absl::Now() < deadline);
    return s;
  }
  static constexpr absl::Duration kRecoveryWait = absl::Seconds(15);

  // Writes a batch that touches the refs CF, then bumps refs_generation
  // (whether or not it landed). Every refs write goes through here, under
  // commit_mu.
  rocksdb::Status WriteRefs(const rocksdb::WriteOptions& write_options, rocksdb::WriteBatch* batch,
                            Room room = Room::kNormal) {
    rocksdb::Status s = Write(write_options, batch, room);
    refs_generation.fetch_add(1, std::memory_order_acq_rel);
    return s;
  }

  // --- Disk space (StoreOptions::reserved_disk_bytes).
  std::string reserve_path;  // <path>/RESERVED
  std::mutex reserve_mu;     // guards the reserve file

  // Free bytes of the store's file system for an unprivileged writer.
  uint64_t FreeSpace() const { return FreeBytes(options.path); }
  static uint64_t FreeBytes(const std::string& path) {
    struct statvfs st;
    if (statvfs(path.c_str(), &st) != 0) return std::numeric_limits<uint64_t>::max();
    return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  }

  // ResourceExhausted if writing `bytes` of chunks would leave less than
  // the reserved space free.
  absl::Status CheckDiskSpace(uint64_t bytes) const {
    const uint64_t reserved = options.reserved_disk_bytes;
    if (reserved == 0) return absl::OkStatus();
    const uint64_t free = FreeSpace();
    if (free >= reserved && free - reserved >= bytes) return absl::OkStatus();
    return absl::ResourceExhaustedError(absl::StrCat(
        "disk full: ", free, " bytes free where the store lives, a save needs ", bytes,
        " more and ", reserved,
        " stay reserved for deletes and gc; nothing was saved (delete versions and run gc, or "
        "add space)"));
  }

  void DropReserve() {
    std::lock_guard<std::mutex> lock(reserve_mu);
    std::error_code ec;
    fs::remove(reserve_path, ec);
  }

  // Makes the reserve file if it is missing and the disk has room for it
  // with the same again to spare.
  void RestoreReserve() {
    const uint64_t reserved = options.reserved_disk_bytes;
    if (reserved == 0) return;
    std::lock_guard<std::mutex> lock(reserve_mu);
    std::error_code ec;
    if (fs::exists(reserve_path, ec) || FreeSpace() / 2 < reserved) return;
    const int fd = open(reserve_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    const bool ok = posix_fallocate(fd, 0, static_cast<off_t>(reserved)) == 0 && fsync(fd) == 0;
    close(fd);
    if (!ok) fs::remove(reserve_path, ec);
  }

  // Guards the allocators and the set of live uploads.
  std::mutex mu;
  uint64_t next_block = 1;       // Next chunk-id block to hand out.
  uint64_t persisted_block = 0;  // kNextBlockKey on disk; next_block <= it.
  uint64_t next_upload_id = 1;
  absl::flat_hash_set<uint64_t> live_uploads;
  // Chunk-id blocks each live upload has taken. GC never touches a file in
  // one of them: their chunks may still become referenced.
  absl::flat_hash_map<uint64_t, std::vector<uint64_t>> live_blocks;

  // Serializes garbage collections (their file rewrites run outside
  // commit_mu).
  std::mutex gc_mu;

  // Guards `pins`: refs keys (namespace \0 digest) that live uploads found or
  // wrote, with counts. CollectGarbage holds it from its pin check until its
  // batch is written, so that a pin taken before a refs lookup always wins.
  std::mutex pin_mu;
  absl::flat_hash_map<std::string, uint64_t> pins;

  // Bytes each namespace holds (distinct chunks with refcount > 0): what its
  // quota limits. Computed by Open, changed only by Commit and DeleteVersion
  // under commit_mu (so a check and its update are atomic); usage_mu lets
  // NamespaceBytes read without waiting for a commit's fsync.
  std::mutex usage_mu;
  absl::flat_hash_map<std::string, uint64_t> ns_bytes;

  uint64_t UsageOf(absl::string_view ns) {
    std::lock_guard<std::mutex> lock(usage_mu);
    auto it = ns_bytes.find(ns);
    return it == ns_bytes.end() ? 0 : it->second;
  }
  void AddUsage(const std::string& ns, uint64_t add, uint64_t sub) {
    std::lock_guard<std::mutex> lock(usage_mu);
    uint64_t& bytes = ns_bytes[ns];
    bytes = bytes + add - std::min(sub, bytes + add);
    if (bytes == 0) ns_bytes.erase(ns);
  }

  ~StoreCore() {
    if (db == nullptr) return;
    for (rocksdb::ColumnFamilyHandle* h : handles) {
      db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
    }
    db->Close().PermitUncheckedError();
    delete db;
  }

  rocksdb::WriteOptions CommitWriteOptions() const {
    rocksdb::WriteOptions w;
    w.sync = options.sync_commits;
    return w;
  }

  // Hands out a fresh block of 2^20 chunk ids. Blocks are reserved on disk
  // ahead of use (kNextBlockKey, synced), so that ids never repeat, even
  // after a crash or after GC removed the newest chunks.
  absl::StatusOr<uint64_t> AllocateBlock(uint64_t upload_id) {
    constexpr uint64_t kReserve = 1024;
    std::lock_guard<std::mutex> lock(mu);
    if (next_block >= persisted_block) {
      uint64_t reserved = next_block + kReserve;
      rocksdb::WriteOptions w;
      w.sync = true;
      CKPT_RETURN_IF_ERROR(
          FromRocksDb(PutOne(w, default_cf, kNextBlockKey, EncodeBigEndian64(reserved)),
                      "reserving chunk ids"));
      persisted_block = reserved;
    }
    live_blocks[upload_id].push_back(next_block);
    return next_block++;
  }

  rocksdb::Status PutOne(const rocksdb::WriteOptions& w, rocksdb::ColumnFamilyHandle* cf,
                         const std::string& key, const std::string& value,
                         Room room = Room::kNormal) {
    rocksdb::WriteBatch batch;
    batch.Put(cf, key, value);
    return Write(w, &batch, room);
  }
  rocksdb::Status DeleteOne(const rocksdb::WriteOptions& w, rocksdb::ColumnFamilyHandle* cf,
                            const std::string& key, Room room = Room::kNormal) {
    rocksdb::WriteBatch batch;
    batch.Delete(cf, key);
    return Write(w, &batch, room);
  }

  void Pin(const std::string& ref_key) {
    std::lock_guard<std::mutex> lock(pin_mu);
    ++pins[ref_key];
  }
  void Unpin(const std::string& ref_key) {
    std::lock_guard<std::mutex> lock(pin_mu);
    auto it = pins.find(ref_key);
    if (it != pins.end() && --it->second == 0) pins.erase(it);
  }
};

}  // namespace internal

namespace {

using internal::StoreCore;

// Slices as absl::string_view (Debian's Abseil does not alias std's).
absl::string_view View(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

std::string Quote(absl::string_view s) { return absl::StrCat("'", s, "'"); }

absl::Status CheckpointNotFound(absl::string_view name) {
  return absl::NotFoundError(absl::StrCat("checkpoint ", Quote(name), " not found"));
}

std::string VersionContext(absl::string_view name, uint64_t version) {
  return absl::StrCat("checkpoint ", Quote(name), " version ", version);
}

// An iterator over [lower, upper) of one column family (upper empty: no
// bound). Not movable: the read options point into it.
class ScanIterator {
 public:
  ScanIterator(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, const rocksdb::ReadOptions& base,
               std::string lower, std::string upper)
      : lower_(std::move(lower)), upper_(std::move(upper)), options_(base) {
    lower_slice_ = lower_;
    upper_slice_ = upper_;
    options_.iterate_lower_bound = &lower_slice_;
    if (!upper_.empty()) options_.iterate_upper_bound = &upper_slice_;
    it_.reset(db->NewIterator(options_, cf));
  }
  ScanIterator(const ScanIterator&) = delete;
  ScanIterator& operator=(const ScanIterator&) = delete;

  rocksdb::Iterator* operator->() { return it_.get(); }

 private:
  std::string lower_, upper_;
  rocksdb::Slice lower_slice_, upper_slice_;
  rocksdb::ReadOptions options_;
  std::unique_ptr<rocksdb::Iterator> it_;
};

// The highest version of `name`, or 0 if it has none.
absl::StatusOr<uint64_t> LatestVersion(StoreCore& core, const rocksdb::ReadOptions& ro,
                                       absl::string_view name) {
  std::string prefix = VersionPrefix(name);
  ScanIterator it(core.db, core.manifests_cf, ro, prefix, PrefixSuccessor(prefix));
  it->SeekToLast();
  if (!it->Valid()) {
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading versions"));
    return 0;
  }
  CKPT_ASSIGN_OR_RETURN(auto parsed, ParseVersionKey(View(it->key())));
  return parsed.second;
}

// User tags of `name`, by version.
absl::StatusOr<std::map<uint64_t, std::vector<std::string>>> TagsByVersion(
    StoreCore& core, const rocksdb::ReadOptions& ro, absl::string_view name) {
  std::map<uint64_t, std::vector<std::string>> tags;
  std::string prefix = TagPrefix(name);
  ScanIterator it(core.db, core.tags_cf, ro, prefix, PrefixSuccessor(prefix));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    CKPT_ASSIGN_OR_RETURN(auto key, ParseTagKey(View(it->key())));
    auto version = DecodeBigEndian64(View(it->value()));
    if (!version.ok()) {
      return Annotate(version.status(),
                      absl::StrCat("tag ", Quote(key.second), " of ", Quote(name)));
    }
    tags[*version].push_back(std::move(key.second));
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading tags"));
  return tags;
}

// ResourceExhausted if adding `tags` would give `name` more than
// kMaxTagsPerName tags.
absl::Status CheckTagCount(StoreCore& core, const rocksdb::ReadOptions& ro, absl::string_view name,
                           const std::vector<std::string>& tags) {
  absl::flat_hash_set<std::string> all(tags.begin(), tags.end());
  std::string prefix = TagPrefix(name);
  ScanIterator it(core.db, core.tags_cf, ro, prefix, PrefixSuccessor(prefix));
  for (it->SeekToFirst(); it->Valid() && all.size() <= kMaxTagsPerName; it->Next()) {
    CKPT_ASSIGN_OR_RETURN(auto key, ParseTagKey(View(it->key())));
    all.insert(std::move(key.second));
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading tags"));
  if (all.size() > kMaxTagsPerName) {
    return absl::ResourceExhaustedError(absl::StrCat(Quote(name), " would have more than ",
                                                     kMaxTagsPerName,
                                                     " tags; remove some first"));
  }
  return absl::OkStatus();
}

// Sorted user tags plus "latest" where it applies.
std::vector<std::string> WithLatest(std::vector<std::string> tags, bool is_latest) {
  if (is_latest) tags.emplace_back(kLatestTag);
  std::sort(tags.begin(), tags.end());
  tags.erase(std::unique(tags.begin(), tags.end()), tags.end());
  return tags;
}

// Whether `name` has any version (for choosing a NotFound message).
absl::StatusOr<bool> HasVersions(StoreCore& core, const rocksdb::ReadOptions& ro,
                                 absl::string_view name) {
  CKPT_ASSIGN_OR_RETURN(uint64_t latest, LatestVersion(core, ro, name));
  return latest != 0;
}

absl::Status VersionNotFound(StoreCore& core, const rocksdb::ReadOptions& ro,
                             absl::string_view name, uint64_t version) {
  CKPT_ASSIGN_OR_RETURN(bool any, HasVersions(core, ro, name));
  if (!any) return CheckpointNotFound(name);
  return absl::NotFoundError(absl::StrCat("version ", version, " of ", Quote(name), " not found"));
}

// Reads and decodes a version record; NotFound (naming what is missing) if
// it does not exist.
absl::StatusOr<VersionInfo> ReadVersionRecord(StoreCore& core, const rocksdb::ReadOptions& ro,
                                              absl::string_view name, uint64_t version) {
  std::string value;
  rocksdb::Status s = core.db->Get(ro, core.manifests_cf, VersionKey(name, version), &value);
  if (s.IsNotFound()) return VersionNotFound(core, ro, name, version);
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, VersionContext(name, version)));
  auto info = DecodeVersionRecord(value);
  if (!info.ok()) return Annotate(info.status(), VersionContext(name, version));
  // The key is authoritative for where the record lives.
  info->name = std::string(name);
  info->version = version;
  return info;
}

absl::StatusOr<Tree> ReadTree(StoreCore& core, const rocksdb::ReadOptions& ro,
                              absl::string_view name, uint64_t version) {
  std::string value;
  rocksdb::Status s = core.db->Get(ro, core.manifests_cf, ManifestKey(name, version), &value);
  if (s.IsNotFound()) return VersionNotFound(core, ro, name, version);
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, VersionContext(name, version)));
  auto tree = DecodeTree(value);
  if (!tree.ok()) return Annotate(tree.status(), VersionContext(name, version));
  return tree;
}

// Distinct digests of a tree, in first-use order, with the first node that
// uses each.
std::vector<std::pair<Digest, size_t>> DistinctDigests(const Tree& tree) {
  std::vector<std::pair<Digest, size_t>> out;
  absl::flat_hash_set<Digest> seen;
  for (size_t i = 0; i < tree.size(); ++i) {
    for (const Digest& d : tree[i].data.chunks) {
      if (seen.insert(d).second) out.emplace_back(d, i);
    }
  }
  return out;
}

// Looks up refs keys; values[i] is set for found keys.
absl::Status MultiGetRefs(StoreCore& core, const rocksdb::ReadOptions& ro,
                          const std::vector<std::string>& keys,
                          std::vector<std::optional<RefValue>>* values) {
  values->assign(keys.size(), std::nullopt);
  if (keys.empty()) return absl::OkStatus();
  std::vector<rocksdb::Slice> slices(keys.begin(), keys.end());
  std::vector<rocksdb::PinnableSlice> raw(keys.size());
  std::vector<rocksdb::Status> statuses(keys.size());
  core.db->MultiGet(ro, core.refs_cf, keys.size(), slices.data(), raw.data(), statuses.data());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (statuses[i].IsNotFound()) continue;
    CKPT_RETURN_IF_ERROR(FromRocksDb(statuses[i], "reading chunk refs"));
    auto value = DecodeRefValue(View(raw[i]));
    if (!value.ok()) {
      auto key = ParseRefKey(keys[i]);
      return Annotate(value.status(), absl::StrCat("chunk ", key.ok() ? key->second.Hex() : "?"));
    }
    (*values)[i] = *value;
  }
  return absl::OkStatus();
}

// What the first phase of a garbage collection learned about chunk ids.
struct ChunkUse {
  // (chunk id, length) of every chunk a refs entry keeps, sorted.
  std::vector<std::pair<uint64_t, uint64_t>> referenced;
  // Blocks of live uploads, sorted, and the first block not handed out yet.
  std::vector<uint64_t> live_blocks;
  uint64_t first_new_block = 0;
  // A refs entry could not be decoded: its chunk is unknown, so no file may
  // be dropped or rewritten.
  bool damaged = false;

  // Whether [lo, hi] overlaps a block whose chunks may still be committed.
  bool TouchesLiveBlock(uint64_t lo, uint64_t hi) const {
    const uint64_t first = lo >> kChunkIdBlockBits, last = hi >> kChunkIdBlockBits;
    if (last >= first_new_block) return true;
    auto it = std::lower_bound(live_blocks.begin(), live_blocks.end(), first);
    return it != live_blocks.end() && *it <= last;
  }

  // Number and bytes of referenced chunks in [lo, hi].
  std::pair<uint64_t, uint64_t> Referenced(uint64_t lo, uint64_t hi) const {
    std::pair<uint64_t, uint64_t> out{0, 0};
    auto it =
        std::lower_bound(referenced.begin(), referenced.end(), std::make_pair(lo, uint64_t{0}));
    for (; it != referenced.end() && it->first <= hi; ++it) {
      ++out.first;
      out.second += it->second;
    }
    return out;
  }

  // The maximal sub-ranges of [lo, hi] holding no referenced chunk.
  std::vector<ChunkIdRange> Unreferenced(uint64_t lo, uint64_t hi) const {
    hi = std::min(hi, std::numeric_limits<uint64_t>::max() - 1);  // Keeps hi + 1 valid.
    std::vector<ChunkIdRange> out;
    uint64_t next = lo;
    auto it =
        std::lower_bound(referenced.begin(), referenced.end(), std::make_pair(lo, uint64_t{0}));
    for (; it != referenced.end() && it->first <= hi; ++it) {
      if (it->first > next) out.push_back({next, it->first - 1});
      next = it->first + 1;
    }
    if (next <= hi) out.push_back({next, hi});
    return out;
  }
};

// Sorts ranges and merges the overlapping ones (a merged range is safe to
// act on when each part is).
std::vector<ChunkIdRange> MergeRanges(std::vector<ChunkIdRange> ranges) {
  std::sort(ranges.begin(), ranges.end(),
            [](const ChunkIdRange& a, const ChunkIdRange& b) { return a.lo < b.lo; });
  std::vector<ChunkIdRange> out;
  for (const ChunkIdRange& r : ranges) {
    if (!out.empty() && r.lo <= out.back().hi) {
      out.back().hi = std::max(out.back().hi, r.hi);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

// Garbage collection's second phase in kIngest mode. Each upload's chunks
// sit in files of their own key range, so a file is handled on its own:
// dropped whole when no chunk in it is referenced, or, when at least a
// quarter of it is garbage, rewritten by deleting its unreferenced id ranges
// and compacting exactly its key range (a range tombstone that spanned other
// files would make the compaction rewrite those too). Files with less
// garbage wait; their dead chunks are already unreachable.
absl::Status ReclaimChunkFiles(StoreCore& core, const ChunkUse& use) {
  if (use.damaged) return absl::OkStatus();
  std::vector<rocksdb::LiveFileMetaData> files;
  core.db->GetLiveFilesMetaData(&files);
  std::vector<ChunkIdRange> drop, rewrite;
  for (const rocksdb::LiveFileMetaData& f : files) {
    // L0 files may overlap one another; DeleteFilesInRanges skips them too.
    if (f.column_family_name != kChunksFamily || f.level == 0) continue;
    auto lo = ParseChunkKey(f.smallestkey);
    auto hi = ParseChunkKey(f.largestkey);
    if (!lo.ok() || !hi.ok() || *lo > *hi || use.TouchesLiveBlock(*lo, *hi)) continue;
    auto [live, live_bytes] = use.Referenced(*lo, *hi);
    if (live == 0) {
      drop.push_back({*lo, *hi});
      continue;
    }
    const uint64_t entries = f.num_entries - std::min(f.num_entries, f.num_deletions);
    const uint64_t garbage_bytes = f.size - std::min<uint64_t>(f.size, live_bytes);
    // A rewrite first writes the live part anew: skipped while the disk
    // lacks the room (the file's dead chunks are unreachable already).
    if (entries > live && garbage_bytes * 4 >= f.size &&
        core.CheckDiskSpace(live_bytes + (live_bytes >> 4)).ok()) {
      rewrite.push_back({*lo, *hi});
    }
  }

  drop = MergeRanges(std::move(drop));
  if (!drop.empty()) {
    std::vector<std::string> keys;
    keys.reserve(2 * drop.size());
    for (const ChunkIdRange& r : drop) {
      keys.push_back(ChunkKey(r.lo));
      keys.push_back(ChunkKey(r.hi));
    }
    std::vector<rocksdb::Slice> slices(keys.begin(), keys.end());
    std::vector<rocksdb::RangePtr> ranges;
    for (size_t i = 0; i < slices.size(); i += 2) ranges.emplace_back(&slices[i], &slices[i + 1]);
    CKPT_RETURN_IF_ERROR(
        FromRocksDb(rocksdb::DeleteFilesInRanges(core.db, core.chunks_cf, ranges.data(),
                                                 ranges.size(), /*include_end=*/true),
                    "dropping dead chunk files"));
  }

  rocksdb::CompactRangeOptions compact;
  compact.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForceOptimized;
  for (const ChunkIdRange& r : MergeRanges(std::move(rewrite))) {
    rocksdb::WriteBatch batch;
    for (const ChunkIdRange& gap : use.Unreferenced(r.lo, r.hi)) {
      batch.DeleteRange(core.chunks_cf, ChunkKey(gap.lo), ChunkKey(gap.hi + 1));
    }
    // Not synced: tombstones lost in a crash are simply written again by
    // the next collection.
    CKPT_RETURN_IF_ERROR(
        FromRocksDb(core.Write(rocksdb::WriteOptions(), &batch, StoreCore::Room::kMayUseReserve),
                    "deleting dead chunks"));
    // Flushed alone, the tombstones form a file confined to this range.
    rocksdb::FlushOptions flush;
    flush.wait = true;
    CKPT_RETURN_IF_ERROR(
        FromRocksDb(core.db->Flush(flush, core.chunks_cf), "flushing dead chunk tombstones"));
    const std::string begin_key = ChunkKey(r.lo), end_key = ChunkKey(r.hi);
    rocksdb::Slice begin(begin_key), end(end_key);  // Both inclusive.
    CKPT_RETURN_IF_ERROR(FromRocksDb(core.db->CompactRange(compact, core.chunks_cf, &begin, &end),
                                     "compacting a chunk file"));
  }
  return absl::OkStatus();
}

absl::Status FsError(const std::error_code& ec, absl::string_view context) {
  return ErrnoStatus(ec.value(), context);
}

// The on-disk format version (kFormatKey): recorded in a new store, checked
// in an existing one before anything else is written to it.
absl::Status CheckFormat(StoreCore& core) {
  std::string value;
  rocksdb::Status s = core.db->Get(rocksdb::ReadOptions(), core.default_cf, kFormatKey, &value);
  if (s.IsNotFound()) {
    // A new store, or one written before the key existed (format 1).
    rocksdb::WriteOptions w;
    w.sync = true;
    return FromRocksDb(
        core.PutOne(w, core.default_cf, kFormatKey, EncodeBigEndian64(kStoreFormatVersion)),
        "recording the store's format version");
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, "reading the store's format version"));
  auto version = DecodeBigEndian64(value);
  if (!version.ok()) return Annotate(version.status(), "reading the store's format version");
  if (*version != kStoreFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the store at ", core.options.path, " has on-disk format version ", *version,
        ", and this server reads format ", kStoreFormatVersion,
        ": run a ckpt-server release that reads format ", *version,
        " (README: Backup, restore and upgrade); nothing was changed"));
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------
// Upload

namespace {

class RocksDbUpload final : public Upload {
 public:
  // Where one written chunk lives.
  struct Written {
    uint64_t chunk_id;
    uint64_t length;
  };

  enum class State { kOpen, kSealed, kCommitted };

  RocksDbUpload(std::shared_ptr<StoreCore> core, std::string ns, uint64_t id)
      : core_(std::move(core)), ns_(std::move(ns)), id_(id) {}

  ~RocksDbUpload() override {
    if (state_ != State::kCommitted) Abandon();
    for (const Digest& d : pinned_) core_->Unpin(RefKey(ns_, d));
    std::lock_guard<std::mutex> lock(core_->mu);
    core_->live_uploads.erase(id_);
    core_->live_blocks.erase(id_);
  }

  absl::StatusOr<std::vector<bool>> FindMissing(absl::Span<const Digest> digests) override {
    std::vector<bool> missing(digests.size(), false);
    std::vector<size_t> asked;
    std::vector<std::string> keys;
    for (size_t i = 0; i < digests.size(); ++i) {
      if (Has(digests[i])) continue;
      asked.push_back(i);
      keys.push_back(RefKey(ns_, digests[i]));
    }
    // Pin before looking: a GC that has not yet checked the pins will skip
    // these; one that already did has written its batch, and the lookup
    // below sees the entry gone.
    for (const std::string& key : keys) core_->Pin(key);
    // Read before the lookups (see StoreCore::refs_generation).
    const uint64_t generation = core_->refs_generation.load(std::memory_order_acquire);
    if (!looked_up_generation_.has_value()) looked_up_generation_ = generation;
    std::vector<std::optional<RefValue>> values;
    absl::Status s = MultiGetRefs(*core_, rocksdb::ReadOptions(), keys, &values);
    if (s.ok()) {
      for (size_t j = 0; j < asked.size(); ++j) looked_up_[digests[asked[j]]] = values[j];
    }
    for (size_t j = 0; j < asked.size(); ++j) {
      const Digest& d = digests[asked[j]];
      if (s.ok() && values[j].has_value() && pinned_.insert(d).second) continue;
      // Missing, a repeat within this call, or an error: drop the pin.
      core_->Unpin(keys[j]);
      if (s.ok() && !values[j].has_value()) missing[asked[j]] = true;
    }
    if (!s.ok()) return s;
    return missing;
  }

  absl::Status PutChunk(const Digest& digest, absl::Span<const uint8_t> data) override {
    if (state_ != State::kOpen) {
      return absl::FailedPreconditionError("upload is sealed; no more chunks accepted");
    }
    CKPT_RETURN_IF_ERROR(broken_);
    if (data.size() > core_->options.max_chunk_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", digest.Hex(), " has ", data.size(), " bytes, more than the ",
                       core_->options.max_chunk_bytes, "-byte limit"));
    }
    Digest computed = Digest::Of(data);
    if (computed != digest) {
      return absl::InvalidArgumentError(absl::StrCat("chunk digest mismatch: declared ",
                                                     digest.Hex(), ", computed ", computed.Hex()));
    }
    if (written_.contains(digest)) return absl::OkStatus();

    bool new_block = next_id_ == block_end_;
    if (new_block) {
      CKPT_ASSIGN_OR_RETURN(uint64_t block, core_->AllocateBlock(id_));
      next_id_ = block << kChunkIdBlockBits;
      block_end_ = next_id_ + kChunkIdBlockSize;
      ranges_.push_back({next_id_, block_end_ - 1});
    }
    const uint64_t id = next_id_;
    rocksdb::Slice value(reinterpret_cast<const char*>(data.data()), data.size());
    // Free space is looked at every MiB or so (statvfs per small chunk
    // would cost more than the chunk).
    absl::Status s;
    unchecked_bytes_ += data.size();
    if (unchecked_bytes_ >= kDiskCheckBytes || written_.empty()) {
      s = core_->CheckDiskSpace(std::max<uint64_t>(unchecked_bytes_, kDiskCheckBytes));
      unchecked_bytes_ = 0;
    }
    if (s.ok()) s = AppendToFile(new_block, id, value);
    if (!s.ok()) {
      broken_ = s;  // The file or range is in an unknown state now.
      return s;
    }
    ++next_id_;
    written_.emplace(digest, Written{id, data.size()});
    bytes_written_ += data.size();
    if (pinned_.insert(digest).second) core_->Pin(RefKey(ns_, digest));
    return absl::OkStatus();
  }

  bool Has(const Digest& digest) const override {
    return written_.contains(digest) || pinned_.contains(digest);
  }

  absl::Status Seal() override {
    if (state_ != State::kOpen) return absl::OkStatus();
    CKPT_RETURN_IF_ERROR(broken_);
    absl::Status s = SealImpl();
    if (!s.ok()) {
      broken_ = s;
      return s;
    }
    state_ = State::kSealed;
    return absl::OkStatus();
  }

  uint64_t bytes_written() const override { return bytes_written_; }

  // For the store's Commit: the refs entries FindMissing read, if no refs
  // write has landed since (generation unchanged), else null.
  const absl::flat_hash_map<Digest, std::optional<RefValue>>* LookupsValidAt(
      uint64_t generation) const {
    return looked_up_generation_ == generation ? &looked_up_ : nullptr;
  }

  // For the store's Commit.
  const StoreCore* core() const { return core_.get(); }
  const std::string& ns() const { return ns_; }
  uint64_t id() const { return id_; }
  State state() const { return state_; }
  bool pending_written() const { return pending_written_; }
  const absl::flat_hash_map<Digest, Written>& written() const { return written_; }
  void MarkCommitted() {
    state_ = State::kCommitted;
    pending_written_ = false;
  }

 private:
  absl::Status WritePending(bool sync) {
    PendingRecord record{ranges_, written_.size(), bytes_written_};
    rocksdb::WriteOptions w;
    w.sync = sync;
    CKPT_RETURN_IF_ERROR(FromRocksDb(
        core_->PutOne(w, core_->default_cf, PendingKey(id_), EncodePendingRecord(record)),
        "recording pending upload"));
    pending_written_ = true;
    return absl::OkStatus();
  }

  // kIngest: appends to the current SST file, starting a new one at a block
  // boundary (files must not span blocks, or they would overlap other
  // uploads' files) and every kMaxIngestFileBytes.
  absl::Status AppendToFile(bool new_block, uint64_t id, const rocksdb::Slice& value) {
    if (writer_ != nullptr && (new_block || writer_bytes_ >= kMaxIngestFileBytes)) {
      CKPT_RETURN_IF_ERROR(FinishFile());
    }
    if (writer_ == nullptr) {
      current_file_ =
          (fs::path(core_->ingest_dir) / absl::StrCat(id_, "-", files_.size(), ".sst")).string();
      // invalidate_page_cache=false: a restore right after a save then reads
      // from the page cache.
      writer_ = std::make_unique<rocksdb::SstFileWriter>(
          core_->chunk_env_options, core_->chunk_file_options, core_->chunks_cf,
          /*invalidate_page_cache=*/false);
      writer_bytes_ = 0;
      CKPT_RETURN_IF_ERROR(
          FromRocksDb(writer_->Open(current_file_), absl::StrCat("creating ", current_file_)));
    }
    CKPT_RETURN_IF_ERROR(
        FromRocksDb(writer_->Put(ChunkKey(id), value), absl::StrCat("writing ", current_file_)));
    writer_bytes_ += value.size();
    return absl::OkStatus();
  }

  absl::Status FinishFile() {
    rocksdb::Status s = writer_->Finish();  // Fsyncs the file.
    writer_.reset();
    files_.push_back(std::move(current_file_));
    current_file_.clear();
    return FromRocksDb(s, absl::StrCat("finishing ", files_.back()));
  }

  absl::Status SealImpl() {
    if (written_.empty()) return absl::OkStatus();
    // Recorded before the chunks enter the database: after a crash in
    // between, GC finds and removes them.
    CKPT_RETURN_IF_ERROR(WritePending(/*sync=*/true));
    if (writer_ != nullptr) CKPT_RETURN_IF_ERROR(FinishFile());
    rocksdb::IngestExternalFileOptions ingest;
    ingest.move_files = true;
    ingest.write_global_seqno = false;  // Keep files immutable (new DBs only).
    CKPT_CRASH_POINT("upload.before_ingest");
    rocksdb::Status s = core_->db->IngestExternalFile(core_->chunks_cf, files_, ingest);
    RemoveFiles();  // Moved on success; leftovers on failure.
    CKPT_RETURN_IF_ERROR(FromRocksDb(s, "ingesting chunk files"));
    CKPT_CRASH_POINT("upload.after_ingest");
    return absl::OkStatus();
  }

  void RemoveFiles() {
    std::error_code ec;
    for (const std::string& f : files_) fs::remove(f, ec);
    files_.clear();
    if (!current_file_.empty()) fs::remove(current_file_, ec);
    current_file_.clear();
  }

  // Drops what an uncommitted upload holds. Chunks already in the database
  // stay there until CollectGarbage finds the pending record.
  void Abandon() {
    writer_.reset();  // Abandons an unfinished file.
    RemoveFiles();
  }

  std::shared_ptr<StoreCore> core_;
  const std::string ns_;
  const uint64_t id_;
  State state_ = State::kOpen;
  absl::Status broken_;  // Sticky error of a failed write or seal.

  absl::flat_hash_map<Digest, Written> written_;
  // Digests this upload holds a pin on (found by FindMissing or written).
  absl::flat_hash_set<Digest> pinned_;
  // What FindMissing read for each digest it looked up (nullopt: absent), and
  // the refs generation before its first lookup.
  absl::flat_hash_map<Digest, std::optional<RefValue>> looked_up_;
  std::optional<uint64_t> looked_up_generation_;
  uint64_t bytes_written_ = 0;
  // Bytes written since free space was last checked.
  static constexpr uint64_t kDiskCheckBytes = 1 << 20;
  uint64_t unchecked_bytes_ = 0;

  // Chunk-id blocks taken, each recorded whole as one range.
  std::vector<ChunkIdRange> ranges_;
  uint64_t next_id_ = 0;
  uint64_t block_end_ = 0;
  bool pending_written_ = false;

  // kIngest: the file being written and those finished.
  std::unique_ptr<rocksdb::SstFileWriter> writer_;
  uint64_t writer_bytes_ = 0;
  std::string current_file_;
  std::vector<std::string> files_;
};

}  // namespace

// ---------------------------------------------------------------------------
// Open

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RocksDbStore> store, RocksDbStore::Open(options));
  return std::unique_ptr<Store>(std::move(store));
}

absl::StatusOr<std::unique_ptr<RocksDbStore>> RocksDbStore::Open(const StoreOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("store path is empty");
  if (options.max_chunk_bytes == 0) {
    return absl::InvalidArgumentError("max_chunk_bytes must be positive");
  }
  std::error_code ec;
  fs::create_directories(options.path, ec);
  if (ec) return FsError(ec, absl::StrCat("creating ", options.path));

  auto core = std::make_shared<StoreCore>();
  core->options = options;
  core->reserve_path = (fs::path(options.path) / "RESERVED").string();
  // Opening writes (a new MANIFEST, OPTIONS, WAL): on a full disk the
  // reserve makes room for it.
  if (options.reserved_disk_bytes > 0 &&
      StoreCore::FreeBytes(options.path) < options.reserved_disk_bytes) {
    core->DropReserve();
  }

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;  // The machines have 2 cores.
  db_options.bytes_per_sync = 1 << 20;
  db_options.keep_log_file_num = 4;
  // Recovered WAL records stay in the memtables rather than being flushed
  // while opening: a restart on a full disk needs no room for new files.
  db_options.avoid_flush_during_recovery = true;
  // No preallocation: a WAL would otherwise take 1.1x a memtable (70 MiB) of
  // the disk up front, space the free-space checks cannot see.
  db_options.allow_fallocate = false;
  // Chunk reads then copy straight out of the page cache: no heap block
  // per read (fresh pages cost ~1 GB/s here), no second copy.
  db_options.allow_mmap_reads = true;

  // Metadata families: small values, point lookups, a shared block cache.
  auto cache = rocksdb::NewLRUCache(32 << 20);
  rocksdb::BlockBasedTableOptions meta_table;
  meta_table.checksum = rocksdb::kXXH3;
  meta_table.block_cache = cache;
  meta_table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  rocksdb::ColumnFamilyOptions meta_options;
  meta_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(meta_table));
  // Small memtables: after a write error on a full disk RocksDB resumes only
  // once its largest memtable fits in the free space (kMaxMemtableBytes, well
  // under the reserved space), and flushes stay short.
  meta_options.write_buffer_size = 4 << 20;

  // Chunks: incompressible tensor bytes read once per restore, so no
  // compression and no block cache (reads go to the page cache).
  rocksdb::BlockBasedTableOptions chunk_table;
  chunk_table.checksum = rocksdb::kXXH3;
  chunk_table.no_block_cache = true;
  chunk_table.block_cache = nullptr;
  chunk_table.block_size = 64 << 10;
  rocksdb::ColumnFamilyOptions chunk_options;
  chunk_options.compression = rocksdb::kNoCompression;
  chunk_options.bottommost_compression = rocksdb::kDisableCompressionOption;
  // Never rewrite chunk files for age (the defaults may pick 30 days); only
  // GC's targeted compactions rewrite them.
  chunk_options.ttl = 0;
  chunk_options.periodic_compaction_seconds = 0;
  chunk_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(chunk_table));
  chunk_options.write_buffer_size = 4 << 20;  // only GC's tombstones go through it

  // refs: every save writes one entry per chunk, so a big memtable fills
  // with stale copies of the same keys and every lookup walks a deeper
  // skiplist (20k-tensor saves slowed from 0.22 to 0.31 s over 20 saves with
  // the 64 MiB default; flat at ~0.18 s with 4 MiB). Flushed entries are
  // found through bloom filters and the block cache.
  rocksdb::ColumnFamilyOptions refs_options = meta_options;
  refs_options.write_buffer_size = 4 << 20;
  // Manifests: a 20k-tensor version writes several MB at once.
  rocksdb::ColumnFamilyOptions manifest_options = meta_options;
  manifest_options.write_buffer_size = kMaxMemtableBytes;

  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, meta_options},
      {kChunksFamily, chunk_options},
      {kRefsFamily, refs_options},
      {kManifestsFamily, manifest_options},
      {kTagsFamily, meta_options},
  };
  CKPT_RETURN_IF_ERROR(
      FromRocksDb(rocksdb::DB::Open(db_options, options.path, families, &core->handles, &core->db),
                  absl::StrCat("opening store at ", options.path)));
  core->default_cf = core->handles[0];
  core->chunks_cf = core->handles[1];
  core->refs_cf = core->handles[2];
  core->manifests_cf = core->handles[3];
  core->tags_cf = core->handles[4];
  core->chunk_file_options = rocksdb::Options(db_options, chunk_options);
  core->chunk_env_options = rocksdb::EnvOptions(db_options);
  CKPT_RETURN_IF_ERROR(CheckFormat(*core));

  // The LOCK is ours now: files left in ingest/ belong to a dead process and
  // were never ingested (ingestion moves them out).
  // Tombstones of a collection cut short by a crash come back from the
  // WAL; flushed now, they cannot join those of the next collection into one
  // file spanning unrelated chunk files.
  CKPT_RETURN_IF_ERROR(FromRocksDb(core->db->Flush(rocksdb::FlushOptions(), core->chunks_cf),
                                   "flushing chunk tombstones"));
  core->ingest_dir = (fs::path(options.path) / "ingest").string();
  fs::remove_all(core->ingest_dir, ec);
  if (ec) return FsError(ec, absl::StrCat("cleaning ", core->ingest_dir));
  fs::create_directories(core->ingest_dir, ec);
  if (ec) return FsError(ec, absl::StrCat("creating ", core->ingest_dir));

  // Recover the allocators: past every reserved block, every chunk key and
  // every pending range; past every pending upload id.
  rocksdb::ReadOptions ro;
  uint64_t next_block = 1;
  {
    std::string value;
    rocksdb::Status s = core->db->Get(ro, core->default_cf, kNextBlockKey, &value);
    if (!s.IsNotFound()) {
      CKPT_RETURN_IF_ERROR(FromRocksDb(s, "reading the chunk-id allocator"));
      CKPT_ASSIGN_OR_RETURN(uint64_t reserved, DecodeBigEndian64(value));
      next_block = std::max(next_block, reserved);
    }
  }
  {
    std::unique_ptr<rocksdb::Iterator> it(core->db->NewIterator(ro, core->chunks_cf));
    it->SeekToLast();
    if (it->Valid()) {
      CKPT_ASSIGN_OR_RETURN(uint64_t last, ParseChunkKey(View(it->key())));
      next_block = std::max(next_block, (last >> kChunkIdBlockBits) + 1);
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading the last chunk id"));
  }
  uint64_t next_upload_id = 1;
  {
    ScanIterator it(core->db, core->default_cf, ro, std::string(kPendingPrefix),
                    PrefixSuccessor(kPendingPrefix));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto id = ParsePendingKey(View(it->key()));
      if (!id.ok()) continue;  // GC drops malformed records.
      next_upload_id = std::max(next_upload_id, *id + 1);
      auto record = DecodePendingRecord(View(it->value()));
      if (!record.ok()) continue;
      for (const ChunkIdRange& r : record->ranges) {
        next_block = std::max(next_block, (r.hi >> kChunkIdBlockBits) + 1);
      }
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading pending uploads"));
  }
  // Per-namespace usage: one pass over the refs (small values, one per
  // distinct chunk), so that quota checks never scan.
  {
    std::unique_ptr<rocksdb::Iterator> it(core->db->NewIterator(ro, core->refs_cf));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto key = ParseRefKey(View(it->key()));
      auto value = DecodeRefValue(View(it->value()));
      if (!key.ok() || !value.ok() || value->refcount == 0) continue;
      core->ns_bytes[key->first] += value->length;
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading chunk refs"));
  }
  core->next_block = next_block;
  core->persisted_block = next_block;  // Nothing past it is reserved yet.
  core->next_upload_id = next_upload_id;
  core->RestoreReserve();
  return std::unique_ptr<RocksDbStore>(new RocksDbStore(std::move(core)));
}

RocksDbStore::RocksDbStore(std::shared_ptr<internal::StoreCore> core) : core_(std::move(core)) {}

RocksDbStore::~RocksDbStore() = default;

// ---------------------------------------------------------------------------
// Uploads and commits

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
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  for (const std::string& tag : spec.tags) CKPT_RETURN_IF_ERROR(ValidateUserTag(tag));
  CKPT_RETURN_IF_ERROR(
      Annotate(ValidateMetadata(spec.metadata), absl::StrCat("checkpoint ", Quote(name))));
  CKPT_RETURN_IF_ERROR(Annotate(ValidateTree(spec.tree, core_->options.max_chunk_bytes),
                                absl::StrCat("checkpoint ", Quote(name))));
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
  absl::flat_hash_map<Digest, uint64_t> lengths;  // Each digest's stored length.
  // Written chunks that become the stored copy; every other one is garbage.
  absl::flat_hash_set<std::pair<const RocksDbUpload*, Digest>> kept;
  std::vector<std::string> flat_keys;  // Computed on the first error only.
  auto tensor_key = [&](size_t node) -> const std::string& {
    if (flat_keys.empty()) flat_keys = FlattenedKeys(spec.tree);
    return flat_keys[node];
  };
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
      if (owner == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            "tensor ", Quote(tensor_key(node)), ": chunk ", d.Hex(), " was never uploaded"));
      }
      kept.insert({owner, d});
      new_bytes += value.length;
      added_bytes += value.length;
    }
    lengths[d] = value.length;
    batch.Put(core_->refs_cf, keys[i], EncodeRefValue(value));
  }
  // Every use of a chunk must agree with its stored length.
  for (size_t n = 0; n < spec.tree.size(); ++n) {
    const DataRef& data = spec.tree[n].data;
    for (size_t c = 0; c < data.chunks.size(); ++c) {
      uint64_t stored = lengths[data.chunks[c]];
      if (stored != data.ChunkLength(c)) {
        return absl::FailedPreconditionError(
            absl::StrCat("tensor ", Quote(tensor_key(n)), ": chunk ", c, " (", data.chunks[c].Hex(),
                         ") has ", stored, " bytes, expected ", data.ChunkLength(c)));
      }
    }
  }
  if (const uint64_t quota = NamespaceQuota(core_->options, ns); quota > 0) {
    const uint64_t used = core_->UsageOf(ns);
    if (added_bytes > quota || used > quota - added_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "namespace ", Quote(ns), " quota exceeded: it holds ", used, " bytes, ", Quote(name),
          " would add ", added_bytes, ", the quota is ", quota, " bytes; nothing was saved"));
    }
  }
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

  VersionInfo info;
  info.name = name;
  info.version = version;
  info.create_time_ms = absl::ToUnixMillis(absl::Now());
  info.step = spec.step;
  info.epoch = spec.epoch;
  info.metadata = std::move(spec.metadata);
  info.num_nodes = spec.tree.size();
  for (const Node& node : spec.tree) {
    if (!node.has_data()) continue;
    ++info.num_tensors;
    info.data_bytes += node.data.size;
  }
  info.new_bytes = new_bytes;
  info.world_size = spec.world_size;

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
  for (RocksDbUpload* up : ups) up->MarkCommitted();
  info.tags = WithLatest(std::move(spec.tags), /*is_latest=*/true);
  return info;
}

// ---------------------------------------------------------------------------
// Reads

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
        return absl::NotFoundError(
            absl::StrCat("tag ", Quote(selector.tag), " of ", Quote(name), " not found"));
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
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  absl::string_view ns = NamespaceOf(name);
  // One snapshot for both reads: a concurrent GC cannot remove the chunk
  // between them.
  rocksdb::ManagedSnapshot snapshot(core_->db);
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot.snapshot();
  std::string ref_bytes;
  rocksdb::Status s = core_->db->Get(ro, core_->refs_cf, RefKey(ns, digest), &ref_bytes);
  if (s.IsNotFound()) {
    return absl::NotFoundError(
        absl::StrCat("chunk ", digest.Hex(), " not found in namespace ", Quote(ns)));
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, absl::StrCat("chunk ", digest.Hex())));
  auto ref = DecodeRefValue(ref_bytes);
  if (!ref.ok()) return Annotate(ref.status(), absl::StrCat("chunk ", digest.Hex()));

  ro.fill_cache = false;
  // The digest check below covers every byte with a stronger checksum than
  // the block's: checking both would read each chunk twice.
  ro.verify_checksums = false;
  s = core_->db->Get(ro, core_->chunks_cf, ChunkKey(ref->chunk_id), out);
  if (s.IsNotFound()) {
    // A collection may have removed it since the snapshot if the last
    // version using it was just deleted: then it is simply gone.
    std::string now;
    rocksdb::Status again =
        core_->db->Get(rocksdb::ReadOptions(), core_->refs_cf, RefKey(ns, digest), &now);
    if (again.IsNotFound()) {
      return absl::NotFoundError(
          absl::StrCat("chunk ", digest.Hex(), " not found in namespace ", Quote(ns)));
    }
    return absl::DataLossError(
        absl::StrCat("chunk ", digest.Hex(), " is missing (chunk id ", ref->chunk_id, ")"));
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, absl::StrCat("chunk ", digest.Hex())));
  if (out->size() != ref->length || Digest::Of(*out) != digest) {
    out->clear();
    return absl::DataLossError(absl::StrCat("chunk ", digest.Hex(), " checksum mismatch"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CheckpointSummary>> RocksDbStore::ListCheckpoints(
    absl::string_view prefix, absl::string_view start_after, size_t limit) {
  CKPT_RETURN_IF_ERROR(ValidatePrefix(prefix));
  std::string lower = absl::StrCat("v", prefix);
  std::string seek = lower;
  if (!start_after.empty()) {
    // Past every version key of `start_after` ("v" name \0 ...).
    std::string after = absl::StrCat("v", start_after, absl::string_view("\x01", 1));
    seek = std::max(seek, after);
  }
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

// ---------------------------------------------------------------------------
// Deletes and tags

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
    return absl::FailedPreconditionError(
        absl::StrCat("version ", version, " of ", Quote(name), " is tagged '",
                     absl::StrJoin(own_tags, "', '"), "'; use force"));
  }

  const std::string ns(NamespaceOf(name));
  std::vector<std::string> keys;
  for (const auto& [d, node] : DistinctDigests(tree)) keys.push_back(RefKey(ns, d));
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

absl::Status RocksDbStore::SetTag(absl::string_view name, absl::string_view tag, uint64_t version) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  CKPT_RETURN_IF_ERROR(ValidateUserTag(tag));
  std::lock_guard<std::mutex> commit_lock(core_->commit_mu);
  rocksdb::ReadOptions ro;
  std::string value;
  rocksdb::Status s = core_->db->Get(ro, core_->manifests_cf, VersionKey(name, version), &value);
  if (s.IsNotFound()) return VersionNotFound(*core_, ro, name, version);
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, VersionContext(name, version)));
  CKPT_RETURN_IF_ERROR(CheckTagCount(*core_, ro, name, {std::string(tag)}));
  return FromRocksDb(core_->PutOne(core_->CommitWriteOptions(), core_->tags_cf, TagKey(name, tag),
                                   EncodeBigEndian64(version)),
                     absl::StrCat("setting tag ", Quote(tag), " of ", Quote(name)));
}

absl::Status RocksDbStore::SetRetention(absl::string_view name, const RetentionPolicy& policy) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  CKPT_RETURN_IF_ERROR(ValidateRetentionPolicy(policy));
  const std::string key = RetentionKey(name);
  const absl::string_view what = "setting the retention policy of ";
  if (!policy.enabled()) {
    return FromRocksDb(core_->DeleteOne(core_->CommitWriteOptions(), core_->manifests_cf, key),
                       absl::StrCat(what, Quote(name)));
  }
  return FromRocksDb(core_->PutOne(core_->CommitWriteOptions(), core_->manifests_cf, key,
                                   EncodeRetentionPolicy(policy)),
                     absl::StrCat(what, Quote(name)));
}

absl::StatusOr<RetentionPolicy> RocksDbStore::GetRetention(absl::string_view name) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  std::string value;
  rocksdb::Status s =
      core_->db->Get(rocksdb::ReadOptions(), core_->manifests_cf, RetentionKey(name), &value);
  if (s.IsNotFound()) return RetentionPolicy{};
  const std::string context = absl::StrCat("retention policy of ", Quote(name));
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, context));
  auto policy = DecodeRetentionPolicy(value);
  if (!policy.ok()) return Annotate(policy.status(), context);
  return policy;
}

absl::StatusOr<std::vector<uint64_t>> RocksDbStore::Prune(absl::string_view name, bool dry_run) {
  CKPT_ASSIGN_OR_RETURN(RetentionPolicy policy, GetRetention(name));
  CKPT_ASSIGN_OR_RETURN(std::vector<VersionInfo> versions, ListVersions(name));
  std::vector<uint64_t> chosen = VersionsToPrune(versions, policy);
  if (dry_run) return chosen;
  // Each deletion is its own atomic batch. Without force, a version tagged
  // since the listing is refused and so kept; one deleted meanwhile is gone.
  std::vector<uint64_t> deleted;
  for (uint64_t version : chosen) {
    auto released = DeleteVersion(name, version, /*force=*/false);
    if (released.ok()) {
      deleted.push_back(version);
    } else if (released.status().code() != absl::StatusCode::kFailedPrecondition &&
               released.status().code() != absl::StatusCode::kNotFound) {
      return Annotate(released.status(),
                      absl::StrCat("applying the retention policy of ", Quote(name)));
    }
  }
  return deleted;
}

absl::Status RocksDbStore::DeleteTag(absl::string_view name, absl::string_view tag) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  CKPT_RETURN_IF_ERROR(ValidateUserTag(tag));
  std::lock_guard<std::mutex> commit_lock(core_->commit_mu);
  std::string value;
  rocksdb::Status s =
      core_->db->Get(rocksdb::ReadOptions(), core_->tags_cf, TagKey(name, tag), &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("tag ", Quote(tag), " of ", Quote(name), " not found"));
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, absl::StrCat("reading tag ", Quote(tag))));
  return FromRocksDb(
      core_->DeleteOne(core_->CommitWriteOptions(), core_->tags_cf, TagKey(name, tag),
                       StoreCore::Room::kMayUseReserve),
      absl::StrCat("deleting tag ", Quote(tag), " of ", Quote(name)));
}

// ---------------------------------------------------------------------------
// Garbage collection

absl::StatusOr<GcResult> RocksDbStore::CollectGarbage() {
  std::lock_guard<std::mutex> gc_lock(core_->gc_mu);
  GcResult result;
  ChunkUse use;

  // Phase 1, under the commit mutex: drop unreferenced, unpinned refs
  // entries and the pending records of dead uploads, in one synced batch.
  // From then on their chunks are unreachable.
  {
    std::lock_guard<std::mutex> commit_lock(core_->commit_mu);
    rocksdb::ReadOptions ro;
    ro.fill_cache = false;

    // Every block a live upload holds, and every block handed out later, is
    // off limits: a commit may still reference chunks there.
    {
      std::lock_guard<std::mutex> lock(core_->mu);
      for (const auto& [id, blocks] : core_->live_blocks) {
        use.live_blocks.insert(use.live_blocks.end(), blocks.begin(), blocks.end());
      }
      use.first_new_block = core_->next_block;
    }
    std::sort(use.live_blocks.begin(), use.live_blocks.end());

    struct Candidate {
      std::string key;
      RefValue value;
    };
    std::vector<Candidate> candidates;
    {
      std::unique_ptr<rocksdb::Iterator> it(core_->db->NewIterator(ro, core_->refs_cf));
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        auto value = DecodeRefValue(View(it->value()));
        if (!value.ok()) {
          // A damaged entry might point anywhere: keep its whole block.
          use.damaged = true;
          continue;
        }
        if (value->refcount == 0) {
          candidates.push_back({it->key().ToString(), *value});
        } else {
          use.referenced.emplace_back(value->chunk_id, value->length);
        }
      }
      CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "scanning chunk refs"));
    }

    rocksdb::WriteBatch batch;
    {
      // Uploads begun after this copy have ids >= first_unseen: live too.
      absl::flat_hash_set<uint64_t> live;
      uint64_t first_unseen;
      {
        std::lock_guard<std::mutex> lock(core_->mu);
        live = core_->live_uploads;
        first_unseen = core_->next_upload_id;
      }
      ScanIterator it(core_->db, core_->default_cf, ro, std::string(kPendingPrefix),
                      PrefixSuccessor(kPendingPrefix));
      for (it->SeekToFirst(); it->Valid(); it->Next()) {
        auto id = ParsePendingKey(View(it->key()));
        if (id.ok() && (live.contains(*id) || *id >= first_unseen)) continue;
        batch.Delete(core_->default_cf, it->key());
        ++result.orphan_uploads_removed;
        auto record = DecodePendingRecord(View(it->value()));
        if (!id.ok() || !record.ok()) continue;  // Unreadable: nothing to count.
        // What is really on disk: an upload whose ingest failed (a full
        // disk) recorded chunks it never wrote.
        for (const ChunkIdRange& r : record->ranges) {
          ScanIterator chunks(core_->db, core_->chunks_cf, ro, ChunkKey(r.lo),
                              r.hi == std::numeric_limits<uint64_t>::max() ? std::string()
                                                                           : ChunkKey(r.hi + 1));
          for (chunks->SeekToFirst(); chunks->Valid(); chunks->Next()) {
            ++result.chunks_removed;
            result.bytes_removed += chunks->value().size();
          }
          CKPT_RETURN_IF_ERROR(FromRocksDb(chunks->status(), "scanning a dead upload's chunks"));
        }
      }
      CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "scanning pending uploads"));
    }

    // Held until the batch is written: see StoreCore::pin_mu.
    std::lock_guard<std::mutex> pin_lock(core_->pin_mu);
    for (const Candidate& c : candidates) {
      if (core_->pins.contains(c.key)) {
        use.referenced.emplace_back(c.value.chunk_id, c.value.length);
        continue;
      }
      batch.Delete(core_->refs_cf, c.key);
      ++result.chunks_removed;
      result.bytes_removed += c.value.length;
    }
    std::sort(use.referenced.begin(), use.referenced.end());
    if (batch.Count() > 0) {
      rocksdb::WriteOptions sync;
      sync.sync = true;
      CKPT_RETURN_IF_ERROR(FromRocksDb(
          core_->WriteRefs(sync, &batch, StoreCore::Room::kMayUseReserve), "collecting garbage"));
    }
  }

  // Phase 2, with commits running again: reclaim the space of chunk files.
  // A file without one referenced chunk is dropped whole; a file with enough
  // garbage is rewritten by a compaction of its own key range only, so other
  // chunk files are never rewritten.
  CKPT_RETURN_IF_ERROR(ReclaimChunkFiles(*core_, use));
  core_->RestoreReserve();
  return result;
}

// ---------------------------------------------------------------------------
// Stats and test accessors

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
    ScanIterator it(copy, handles[i], rocksdb::ReadOptions(), "v", "w");
    for (it->SeekToFirst(); it->Valid(); it->Next()) ++info.versions;
    counted = FromRocksDb(it->status(), absl::StrCat("counting the versions of backup ", dir));
  }
  for (rocksdb::ColumnFamilyHandle* h : handles) copy->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  owned.reset();
  CKPT_RETURN_IF_ERROR(counted);
  return info;
}

absl::StatusOr<StoreStats> RocksDbStore::Stats() {
  StoreStats stats;
  rocksdb::ManagedSnapshot snapshot(core_->db);
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot.snapshot();
  ro.fill_cache = false;
  {
    ScanIterator it(core_->db, core_->manifests_cf, ro, "v", "w");
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
