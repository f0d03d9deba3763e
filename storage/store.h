#ifndef CKPT_STORAGE_STORE_H_
#define CKPT_STORAGE_STORE_H_

// The checkpoint store: versioned value trees whose tensor bytes are stored as
// content-addressed chunks, deduplicated per namespace, in RocksDB.
//
// Layout (column families):
//   chunks     chunk id (8 bytes, big-endian)      -> chunk bytes
//   refs       namespace \0 digest                 -> chunk id, length, refcount
//   manifests  "v" name \0 version(be64)           -> version record
//              "m" name \0 version(be64)           -> manifest (encoded Tree)
//              "n" name                            -> next version number
//              "r" name                            -> retention policy
//   tags       name \0 tag                         -> version
//   default    "p" upload id                       -> chunk id ranges of an upload
//                                                     not committed yet
// Chunk bytes are written once: each upload writes its new chunks, in
// increasing chunk-id order from id blocks of its own, into SST files with
// SstFileWriter and ingests them (fsync'd) before the commit. Because an
// upload's ids never interleave with another's, ingested files do not overlap
// and land in the bottommost level, where compaction leaves them alone. The
// commit is one WriteBatch (version record, manifest, refcounts, tags, pending
// record removal) written with a synced WAL.

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/retention.h"
#include "common/types.h"

namespace ckpt::storage {

/// Most user tags one checkpoint name may have (all its versions together):
/// a version's record, and so a page of versions, stays small.
inline constexpr size_t kMaxTagsPerName = 1000;

/// Options of Store::Open.
struct StoreOptions {
  /// Directory of the RocksDB database; created if missing. Required.
  std::string path;
  /// Free disk space that saves leave to the store's metadata, so that on a
  /// full disk deleting versions, gc and a restart still work: a chunk write
  /// that would leave less free space than this fails with
  /// ResourceExhausted (and the save leaves nothing). The store also keeps a
  /// file of this size, `<path>/RESERVED`: when the disk fills up anyway
  /// (another process), deletes and gc drop it to make room for their
  /// metadata writes, and it is made again once there is space. 0: neither.
  /// Default: 64 MiB.
  uint64_t reserved_disk_bytes = uint64_t{64} << 20;
  /// Largest chunk accepted. Default: 4 MiB.
  uint32_t max_chunk_bytes = 4 << 20;
  /// Sync the WAL on every commit (turn off only in benchmarks). Default: true.
  bool sync_commits = true;
  /// Most bytes the versions of one namespace may reference: the sum of the
  /// lengths of the distinct chunks (after deduplication) its committed
  /// versions use. A commit that would go past it fails with
  /// ResourceExhausted and writes nothing. 0: no limit. Default: 0.
  uint64_t namespace_quota_bytes = 0;
  /// Per-namespace overrides of namespace_quota_bytes (0: no limit for that
  /// namespace). Default: none.
  std::map<std::string, uint64_t> namespace_quotas;
};

/// The quota of namespace `ns` under `options` (0: no limit).
inline uint64_t NamespaceQuota(const StoreOptions& options, absl::string_view ns) {
  auto it = options.namespace_quotas.find(std::string(ns));
  return it != options.namespace_quotas.end() ? it->second : options.namespace_quota_bytes;
}

/// Version selector: a number, or a tag (empty tag and version 0: latest).
struct VersionSelector {
  uint64_t version = 0;
  std::string tag;
};

// CheckpointSummary, StoreStats and GcResult are common value types (the
// client reports them too).
using ::ckpt::CheckpointSummary;
using ::ckpt::BackupInfo;
using ::ckpt::GcResult;
using ::ckpt::StoreStats;

/// What Commit writes besides the chunks.
struct CommitSpec {
  std::string name;
  int64_t step = 0;
  int64_t epoch = 0;
  std::map<std::string, std::string> metadata;
  std::vector<std::string> tags;  ///< User tags to point at the new version.
  /// The version's tree, already validated (ValidateTree) and, for a
  /// multi-part save, merged.
  Tree tree;
  uint32_t world_size = 1;
};

class Store;

/// The chunks one save stream contributes, not yet committed. Created by
/// Store::BeginUpload for one namespace. Not thread-safe: one stream uses it.
/// Destroying an uncommitted Upload discards what it wrote (an upload already
/// sealed leaves a pending record that CollectGarbage reclaims).
class Upload {
 public:
  virtual ~Upload() = default;

  /// For each digest, whether the store lacks it (true) or already holds it
  /// in this namespace (false). Digests held are pinned until this Upload is
  /// destroyed: garbage collection will not remove them. A digest already
  /// written by this Upload counts as held.
  virtual absl::StatusOr<std::vector<bool>> FindMissing(absl::Span<const Digest> digests) = 0;

  /// Writes one chunk. Verifies that Digest::Of(data) == digest
  /// (InvalidArgument on mismatch) and its size (<= max_chunk_bytes). Writing
  /// a digest twice is a no-op.
  virtual absl::Status PutChunk(const Digest& digest, absl::Span<const uint8_t> data) = 0;

  /// Whether this Upload has `digest`, written or pinned.
  virtual bool Has(const Digest& digest) const = 0;

  /// Makes the written chunks durable (finishes and ingests the SST files)
  /// and records them as pending. After Seal, PutChunk fails. Idempotent.
  virtual absl::Status Seal() = 0;

  /// Bytes written with PutChunk.
  virtual uint64_t bytes_written() const = 0;
};

/// The store. Thread-safe: all methods may be called concurrently.
class Store {
 public:
  virtual ~Store() = default;

  /// Opens (creating if needed) the store at options.path. Leftover temporary
  /// files of a previous process are removed.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const StoreOptions& options);

  /// Starts an upload into `name`'s namespace (name must be valid).
  virtual absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(absl::string_view name) = 0;

  /// Commits a new version of spec.name made of the chunks of `uploads` (all
  /// sealed here if not yet) and chunks they pinned. Every chunk the tree
  /// references must be in one of them (FailedPrecondition naming the tensor
  /// key otherwise). Assigns the next version number, moves `latest`, applies
  /// spec.tags, and returns once the commit is durable. ResourceExhausted,
  /// with nothing written, if the namespace would exceed its quota
  /// (StoreOptions::namespace_quota_bytes); the uploads' chunks are then
  /// garbage once the uploads are destroyed.
  virtual absl::StatusOr<VersionInfo> Commit(CommitSpec spec,
                                             absl::Span<Upload* const> uploads) = 0;

  /// Resolves a selector to a version of `name`. NotFound names what is missing.
  virtual absl::StatusOr<VersionInfo> GetVersion(absl::string_view name,
                                                 const VersionSelector& selector) = 0;

  /// The tree of a committed version. NotFound if it does not exist.
  virtual absl::StatusOr<Tree> GetTree(absl::string_view name, uint64_t version) = 0;

  /// Reads one chunk of `name`'s namespace into `out` (resized), verifying its
  /// checksum. DataLoss if the bytes do not match the digest, NotFound if the
  /// chunk is missing. The caller adds checkpoint/version/key context.
  virtual absl::Status ReadChunk(absl::string_view name, const Digest& digest,
                                 std::string* out) = 0;

  /// Checkpoint names starting with `prefix`, in order, after `start_after`
  /// (exclusive; empty: from the start), at most `limit`.
  virtual absl::StatusOr<std::vector<CheckpointSummary>> ListCheckpoints(
      absl::string_view prefix, absl::string_view start_after, size_t limit) = 0;

  /// Versions of `name` after version `after` (0: from the first), oldest
  /// first, at most `limit`, with their tags. NotFound if `name` has no
  /// version at all (an empty list past its last one).
  virtual absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      absl::string_view name, uint64_t after = 0,
      size_t limit = std::numeric_limits<size_t>::max()) = 0;

  /// Deletes a version and decrements its chunks' refcounts. NotFound if it
  /// does not exist; FailedPrecondition if user tags point at it and !force
  /// (force removes them). Returns the number of chunks now unreferenced.
  virtual absl::StatusOr<uint64_t> DeleteVersion(absl::string_view name, uint64_t version,
                                                 bool force) = 0;

  /// Points `tag` at an existing version. InvalidArgument for "latest" or
  /// an invalid tag (ValidateUserTag); ResourceExhausted if `name` would
  /// have more than kMaxTagsPerName tags.
  virtual absl::Status SetTag(absl::string_view name, absl::string_view tag, uint64_t version) = 0;

  /// Removes a tag. NotFound if it does not exist.
  virtual absl::Status DeleteTag(absl::string_view name, absl::string_view tag) = 0;

  /// Sets `name`'s retention policy; an off policy (RetentionPolicy{})
  /// removes it. `name` need not have versions yet. InvalidArgument for a bad
  /// name or policy (ValidateRetentionPolicy says why).
  virtual absl::Status SetRetention(absl::string_view name, const RetentionPolicy& policy) = 0;

  /// `name`'s retention policy; an off policy if none is set.
  virtual absl::StatusOr<RetentionPolicy> GetRetention(absl::string_view name) = 0;

  /// Applies `name`'s retention policy: deletes the versions VersionsToPrune
  /// picks, or with `dry_run` only lists them. Returns them, oldest first; a
  /// version that is tagged or deleted meanwhile is kept out of the list.
  /// NotFound if `name` has no versions.
  virtual absl::StatusOr<std::vector<uint64_t>> Prune(absl::string_view name, bool dry_run) = 0;

  /// Removes unreferenced chunks and the chunks of dead uploads. Never removes
  /// a chunk a committed version references or a live Upload wrote or pinned.
  virtual absl::StatusOr<GcResult> CollectGarbage() = 0;

  virtual absl::StatusOr<StoreStats> Stats() = 0;

  /// Writes a consistent copy of the whole store into `dir` (which must not
  /// exist; its parent must) while the store keeps serving: every version
  /// committed before the call is in it, no version committed after, and no
  /// partial one (uploads in flight are dead uploads there, reclaimed by GC).
  /// AlreadyExists if `dir` exists; errors of the file system otherwise.
  virtual absl::StatusOr<BackupInfo> Backup(const std::string& dir) = 0;

  /// Bytes namespace `ns` holds: the sum of the lengths of the distinct
  /// chunks its committed versions reference (what its quota limits). 0 for
  /// a namespace without versions. Cheap: kept up to date in memory by
  /// Commit and DeleteVersion (computed once when the store opens).
  virtual uint64_t NamespaceBytes(absl::string_view ns) = 0;
};

}  // namespace ckpt::storage

#endif  // CKPT_STORAGE_STORE_H_
