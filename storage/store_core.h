#ifndef CKPT_STORAGE_STORE_CORE_H_
#define CKPT_STORAGE_STORE_CORE_H_

// Internal to the RocksDB store (storage/rocksdb_*.cc): the state shared by a
// RocksDbStore and its live uploads, and the read helpers its operations
// share. Not a public header: nothing outside storage/ includes it.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/slice.h"
#include "rocksdb/write_batch.h"
#include "storage/chunk_locations.h"
#include "storage/codec.h"
#include "storage/store.h"
#include "storage/store_rules.h"

namespace ckpt::storage::internal {

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

  // Where the small chunks of recent commits and reads are: loads read
  // them without their refs lookups (a hint: see chunk_locations.h). At
  // most 2^17 chunks, ~10 MiB. Commits add to it under commit_mu; garbage
  // collection forgets what it drops as it drops it, also under commit_mu.
  static constexpr size_t kChunkLocations = size_t{1} << 17;
  ChunkLocations locations{kChunkLocations};

  // Whether a metadata write may use the reserved disk space: only writes
  // that lead to freeing space (deletes, gc) do.
  enum class Room { kNormal, kMayUseReserve };

  // Every metadata write goes through here. It reaches RocksDB only when
  // the disk has room for it and for flushing the memtable it lands in
  // (WriteHeadroom()): RocksDB 7.8 does not come back from a failed WAL write
  // (Debian's build aborts on the WAL's next append or sync), so a full disk
  // must refuse writes before RocksDB meets it. A write that may use the
  // reserve drops the reserve file first when the disk is that full, and
  // goes ahead with room for itself (kMinWriteRoom) and for the flush it
  // would set off (FlushRoomFor) so that deletes still free space; others
  // are refused, NoSpace, with nothing written.
  // Should RocksDB still fail a write (another process took the space
  // between the check and the write), its writes stop until it recovers:
  // its SstFileManager resumes by itself once the largest memtable fits in
  // the free space, looking every few seconds, and a manual Resume()
  // answers Busy meanwhile. A write that may use the reserve waits for that
  // recovery (up to kRecoveryWait); others try one Resume() and give up.
  rocksdb::Status Write(const rocksdb::WriteOptions& write_options, rocksdb::WriteBatch* batch,
                        Room room = Room::kNormal);
  static constexpr absl::Duration kRecoveryWait = absl::Seconds(15);
  static constexpr uint64_t kMinWriteRoom = uint64_t{1} << 20;
  // Free bytes a write needs besides its own: the largest memtable.
  uint64_t WriteHeadroom() const;
  // The free space Write asks of a batch of `bytes` (before the reserve is
  // dropped, and after).
  uint64_t RoomNeeded(uint64_t bytes, Room room) const;
  // What flushes may write before `bytes` more written are safe: memtables
  // waiting for their flush, and the active memtable of each column family
  // those bytes could fill.
  uint64_t FlushRoomFor(uint64_t bytes) const;

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
  static uint64_t FreeBytes(const std::string& path);

  // ResourceExhausted if writing `bytes` of chunks would leave less than
  // the reserved space free, or less than a metadata write needs
  // (WriteHeadroom() + kMinWriteRoom) when the reserve is smaller.
  absl::Status CheckDiskSpace(uint64_t bytes) const;

  void DropReserve();

  // Makes the reserve file if it is missing and the disk has room for it
  // with the same again to spare.
  void RestoreReserve();

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
  // batches are written, so that a pin taken before a refs lookup always
  // wins.
  std::mutex pin_mu;
  absl::flat_hash_map<std::string, uint64_t> pins;

  // Bytes each namespace holds (distinct chunks with refcount > 0): what its
  // quota limits. Computed by Open, changed only by Commit and DeleteVersion
  // under commit_mu (so a check and its update are atomic); usage_mu lets
  // NamespaceBytes read without waiting for a commit's fsync.
  std::mutex usage_mu;
  absl::flat_hash_map<std::string, uint64_t> ns_bytes;

  uint64_t UsageOf(absl::string_view ns);
  void AddUsage(const std::string& ns, uint64_t add, uint64_t sub);

  ~StoreCore();

  rocksdb::WriteOptions CommitWriteOptions() const {
    rocksdb::WriteOptions w;
    w.sync = options.sync_commits;
    return w;
  }

  // Hands out a fresh block of 2^20 chunk ids. Blocks are reserved on disk
  // ahead of use (kNextBlockKey, synced), so that ids never repeat, even
  // after a crash or after GC removed the newest chunks.
  absl::StatusOr<uint64_t> AllocateBlock(uint64_t upload_id);

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

// ---------------------------------------------------------------------------
// Helpers the store's operations share (store_core.cc).

// Slices as absl::string_view (Debian's Abseil does not alias std's).
inline absl::string_view View(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

absl::Status FsError(const std::error_code& ec, absl::string_view context);

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
                                       absl::string_view name);

// User tags of `name`, by version.
absl::StatusOr<std::map<uint64_t, std::vector<std::string>>> TagsByVersion(
    StoreCore& core, const rocksdb::ReadOptions& ro, absl::string_view name);

// ResourceExhausted if adding `tags` would give `name` more than
// kMaxTagsPerName tags.
absl::Status CheckTagCount(StoreCore& core, const rocksdb::ReadOptions& ro, absl::string_view name,
                           const std::vector<std::string>& tags);

// Whether `name` has any version (for choosing a NotFound message).
absl::StatusOr<bool> HasVersions(StoreCore& core, const rocksdb::ReadOptions& ro,
                                 absl::string_view name);

absl::Status VersionNotFound(StoreCore& core, const rocksdb::ReadOptions& ro,
                             absl::string_view name, uint64_t version);

// Reads and decodes a version record; NotFound (naming what is missing) if
// it does not exist.
absl::StatusOr<VersionInfo> ReadVersionRecord(StoreCore& core, const rocksdb::ReadOptions& ro,
                                              absl::string_view name, uint64_t version);

absl::StatusOr<Tree> ReadTree(StoreCore& core, const rocksdb::ReadOptions& ro,
                              absl::string_view name, uint64_t version);

// Looks up refs keys; values[i] is set for found keys.
absl::Status MultiGetRefs(StoreCore& core, const rocksdb::ReadOptions& ro,
                          const std::vector<std::string>& keys,
                          std::vector<std::optional<RefValue>>* values);

}  // namespace ckpt::storage::internal

#endif  // CKPT_STORAGE_STORE_CORE_H_
