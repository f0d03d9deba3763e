#ifndef CKPT_STORAGE_ROCKSDB_STORE_H_
#define CKPT_STORAGE_ROCKSDB_STORE_H_

// The RocksDB implementation of Store. Most code uses it through
// Store::Open; this header adds what tests and tools need.
//
// Layout (column families; the keys and values are encoded by codec.h, the
// only place that knows them):
//   chunks     chunk id (8 bytes, big-endian)      -> chunk bytes
//   refs       namespace \0 digest                 -> chunk id, length, refcount
//   manifests  "v" name \0 version(be64)           -> version record
//              "m" name \0 version(be64)           -> manifest (encoded Tree)
//              "n" name                            -> next version number
//              "r" name                            -> retention policy
//   tags       name \0 tag                         -> version
//   default    "p" upload id                       -> chunk id ranges of an upload
//                                                     not committed yet
//              "b"                                 -> next unreserved chunk-id block
//              "f"                                 -> on-disk format version
// Chunk bytes are written once: each upload writes its new chunks, in
// increasing chunk-id order from id blocks of its own, into SST files with
// SstFileWriter and ingests them (fsync'd) before the commit. Because an
// upload's ids never interleave with another's, ingested files do not overlap
// and land in the bottommost level, where compaction leaves them alone. The
// commit is one WriteBatch (version record, manifest, refcounts, tags, pending
// record removal) written with a synced WAL.
//
// Sources: store_core.{h,cc} (state shared with live uploads),
// rocksdb_upload.{h,cc}, rocksdb_open.cc, rocksdb_commit.cc,
// rocksdb_reads.cc, rocksdb_delete.cc, rocksdb_tags.cc,
// rocksdb_retention.cc, rocksdb_gc.cc, rocksdb_backup.cc, rocksdb_stats.cc.
//
// Lifetime: an Upload keeps the database open until it is destroyed, so a
// store may be destroyed before its uploads (the last one closes it). A store
// directory is opened by one process at a time (RocksDB's LOCK file).
//
// Garbage collection (CollectGarbage):
//  1. Under the commit mutex, in synced batches of at most 1 MiB: deletes
//     refs entries with refcount 0 that no live Upload pins (in chunk id
//     order), and the pending records of dead uploads. Their chunks are
//     unreachable from then on. On a disk without room for the next batch
//     the phase stops there (the rest counts as referenced), step 2 frees
//     the files of what it deleted, and another round goes on.
//  2. With commits running again: looks at each chunk file (each
//     belongs to one upload's id block) outside the blocks of live uploads.
//     A file with no referenced chunk is dropped whole (DeleteFilesInRanges);
//     a file at least a quarter garbage is rewritten by range tombstones over
//     its unreferenced ids, flushed alone, and a compaction of exactly its key
//     range. Files with less garbage are left as they are (their dead chunks
//     are unreachable; a later collection rewrites them once enough dies).
//     No other file is ever rewritten. Chunks a committed upload wrote but the
//     version did not keep (duplicates, unreferenced) are reclaimed the same
//     way; commits write no tombstones.
//     A rewrite needs room for the file's live part: on a nearly full disk
//     it waits (StoreOptions::reserved_disk_bytes), dropping whole files
//     does not.
// GcResult counts what phase 1 made unreachable: the refs entries removed
// plus, for dead uploads, the chunks of theirs really in the database (an
// upload whose ingest failed wrote none). It does not count the unkept
// chunks of committed uploads.
//
// Disk space: saves stop short of the last reserved_disk_bytes of free
// space; metadata writes that hit a full disk anyway resume RocksDB (which
// stops writing after a write error) and retry, deletes and gc after
// dropping the RESERVED file; a restart on a full disk drops it too.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "storage/store.h"

namespace ckpt::storage {

/// Column family names.
inline constexpr char kChunksFamily[] = "chunks";
inline constexpr char kRefsFamily[] = "refs";
inline constexpr char kManifestsFamily[] = "manifests";
inline constexpr char kTagsFamily[] = "tags";

/// Largest SST file one upload writes before starting the next.
inline constexpr uint64_t kMaxIngestFileBytes = uint64_t{256} << 20;
// Chunks at least this large are read without a copy (ReadSharedChunk).
inline constexpr uint64_t kPinnedReadBytes = uint64_t{256} << 10;

namespace internal {
struct StoreCore;
}  // namespace internal

/// Store backed by one RocksDB database. Thread-safe: every method may be
/// called concurrently (see Store for what each does and returns).
class RocksDbStore final : public Store {
 public:
  /// What Store::Open does: opens or creates the database at options.path
  /// (tuned by options.rocksdb), checks its format version, removes
  /// `<path>/ingest/` leftovers and recovers the chunk-id allocator and the
  /// per-namespace usage. Status codes: see Store::Open.
  static absl::StatusOr<std::unique_ptr<RocksDbStore>> Open(const StoreOptions& options);

  ~RocksDbStore() override;

  absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(absl::string_view name) override;
  absl::StatusOr<VersionInfo> Commit(CommitSpec spec, absl::Span<Upload* const> uploads) override;
  absl::StatusOr<VersionInfo> GetVersion(absl::string_view name,
                                         const VersionSelector& selector) override;
  absl::StatusOr<Tree> GetTree(absl::string_view name, uint64_t version) override;
  absl::Status ReadChunk(absl::string_view name, const Digest& digest, std::string* out) override;
  absl::StatusOr<SharedBytes> ReadSharedChunk(absl::string_view name,
                                              const Digest& digest) override;
  std::vector<absl::StatusOr<SharedBytes>> ReadSharedChunks(
      absl::string_view name, absl::Span<const Digest> digests) override;
  /// 64: small chunks are read together (ReadSharedChunks).
  size_t read_batch() const override { return 64; }
  absl::StatusOr<std::vector<CheckpointSummary>> ListCheckpoints(absl::string_view prefix,
                                                                 absl::string_view start_after,
                                                                 size_t limit) override;
  absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      absl::string_view name, uint64_t after = 0,
      size_t limit = std::numeric_limits<size_t>::max()) override;
  absl::StatusOr<uint64_t> DeleteVersion(absl::string_view name, uint64_t version,
                                         bool force) override;
  absl::Status SetTag(absl::string_view name, absl::string_view tag, uint64_t version) override;
  absl::Status DeleteTag(absl::string_view name, absl::string_view tag) override;
  absl::Status SetRetention(absl::string_view name, const RetentionPolicy& policy) override;
  absl::StatusOr<RetentionPolicy> GetRetention(absl::string_view name) override;
  absl::StatusOr<std::vector<uint64_t>> Prune(absl::string_view name, bool dry_run) override;
  absl::StatusOr<GcResult> CollectGarbage() override;
  absl::StatusOr<StoreStats> Stats() override;
  /// A RocksDB checkpoint: hard links to the immutable table files when
  /// `dir` is on the store's file system (copies otherwise), a fresh
  /// MANIFEST, memtables flushed first.
  absl::StatusOr<BackupInfo> Backup(const std::string& dir) override;
  uint64_t NamespaceBytes(absl::string_view ns) override;

  /// For tests: the number of keys in the chunks column family (reads every
  /// chunk; slow on a large store). Errors of RocksDB.
  absl::StatusOr<uint64_t> CountChunkKeys();

  /// For tests: the chunk id the refs entry of (namespace of `name`, digest)
  /// points to. NotFound if there is no entry.
  absl::StatusOr<uint64_t> ChunkIdOf(absl::string_view name, const Digest& digest);

 private:
  explicit RocksDbStore(std::shared_ptr<internal::StoreCore> core);

  std::shared_ptr<internal::StoreCore> core_;
};

}  // namespace ckpt::storage

#endif  // CKPT_STORAGE_ROCKSDB_STORE_H_
