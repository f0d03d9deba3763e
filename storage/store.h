#ifndef CKPT_STORAGE_STORE_H_
#define CKPT_STORAGE_STORE_H_

// The checkpoint store: versioned value trees whose tensor bytes are stored as
// content-addressed chunks, deduplicated per namespace (the first component
// of a checkpoint name). The interface every backend implements; the one
// today is RocksDB (rocksdb_store.h, which also describes its layout).
// tests/storage/store_test.cc is the conformance suite: every behaviour
// documented here, run over every backend.
//
// Statuses: besides the codes each method lists, any method may return the
// backend's own errors (Internal, Unavailable, DataLoss for damaged data,
// ResourceExhausted for a full disk), with what was being done in the
// message. A Store method that fails changes no version, tag, refcount or
// policy, unless it says otherwise (Prune, CollectGarbage).

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
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/retention.h"
#include "common/types.h"
#include "storage/shared_saves.h"

namespace ckpt::storage {

/// Most user tags one checkpoint name may have (all its versions together):
/// a version's record, and so a page of versions, stays small.
inline constexpr size_t kMaxTagsPerName = 1000;

/// Tuning of the RocksDB database behind Store::Open. None of it changes
/// what is stored, only speed and memory; the defaults suit a small server
/// (2 cores, a few GiB of memory).
struct RocksDbTuning {
  /// Flushes and compactions RocksDB runs at once
  /// (DBOptions::max_background_jobs). At least 1. Default: 2.
  int max_background_jobs = 2;
  /// LRU block cache shared by the metadata column families (refs,
  /// manifests, tags, default). Chunk reads bypass it: they copy from the
  /// page cache. 0: no block cache. Default: 32 MiB.
  uint64_t metadata_block_cache_bytes = uint64_t{32} << 20;
  /// Memtable size (ColumnFamilyOptions::write_buffer_size) of the refs,
  /// tags, default and chunks column families. Small on purpose: every save
  /// writes one refs entry per chunk, and a big memtable full of stale
  /// copies of the same keys makes every lookup slower (20k-tensor saves
  /// slowed from 0.22 to 0.31 s over 20 saves with RocksDB's 64 MiB, flat
  /// at 0.18 s with 4 MiB). Positive. Default: 4 MiB.
  uint64_t write_buffer_bytes = uint64_t{4} << 20;
  /// Memtable size of the manifests column family, which takes a version's
  /// whole tree at once (several MB for 20k tensors). The largest memtable:
  /// after a write error on a full disk RocksDB writes again only once this
  /// much is free, so keep StoreOptions::reserved_disk_bytes above it.
  /// Positive. Default: 16 MiB.
  uint64_t manifest_write_buffer_bytes = uint64_t{16} << 20;
};

/// Where a store keeps its data.
enum class StoreBackend {
  /// A RocksDB database in a local directory (StoreOptions::path): the
  /// default, one server per directory.
  kRocksDb,
  /// A Ceph RADOS pool (StoreOptions::rados) that several servers share
  /// (rados_store.h describes its layout).
  kRados,
};

/// The RADOS backend's connection and timing (StoreOptions::rados).
struct RadosOptions {
  /// Pool holding every object but the chunks. Must exist. Default: "ckpt".
  std::string pool = "ckpt";
  /// Pool holding the chunks (their bytes, xattrs, no omap: it may be
  /// erasure coded). Must exist. Empty: `pool`. Fixed by the first server
  /// that uses `pool`: every server must give the same (FailedPrecondition
  /// otherwise). Default: "".
  std::string data_pool;
  /// ceph.conf to read (mon addresses, keyring path). Empty: librados'
  /// default search (CEPH_CONF, /etc/ceph/ceph.conf). Default: "".
  std::string conf_file;
  /// cephx user, without "client.". Default: "admin".
  std::string user = "admin";
  /// Keyring file; empty: what the conf file says. Default: "".
  std::string keyring;
  /// Longest a RADOS call may take before it fails with Unavailable
  /// (librados waits forever by default). Default: 30 s.
  absl::Duration op_timeout = absl::Seconds(30);
  /// How long a live upload's chunks stay protected from garbage collection
  /// without news from its server (renewed while the upload is used). An
  /// upload of a server that died is reclaimed this long after its last
  /// renewal. Default: 10 minutes.
  absl::Duration upload_lease = absl::Minutes(10);
  /// The clock difference between servers that garbage collection allows
  /// for: a chunk touched (written, found by a save, committed) less than
  /// this long before a collection started is never removed by it.
  /// Default: 5 minutes.
  absl::Duration gc_grace = absl::Minutes(5);
  /// Prepended to every RADOS namespace the store uses, so that several
  /// stores (e.g. tests) can share one pool. Default: "".
  std::string namespace_prefix;
};

/// Options of Store::Open.
struct StoreOptions {
  /// Directory of the RocksDB database; created if missing. Required for
  /// RocksDB; ignored by RADOS.
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
  /// Tuning of the RocksDB database. Default: see RocksDbTuning.
  RocksDbTuning rocksdb;
  /// Which backend. Default: RocksDB.
  StoreBackend backend = StoreBackend::kRocksDb;
  /// RADOS backend: the cluster, pool and timings. Ignored by RocksDB.
  RadosOptions rados;
};

/// The quota of namespace `ns` under `options` (0: no limit).
uint64_t NamespaceQuota(const StoreOptions& options, absl::string_view ns);

/// The one quota rule: OK unless `added` more bytes would take the namespace
/// of `name`, holding `used`, past its quota; then ResourceExhausted saying
/// both numbers, the quota and that nothing was saved.
absl::Status CheckQuota(const StoreOptions& options, absl::string_view name, uint64_t used,
                        uint64_t added);

/// Version selector: a number, or a tag (empty tag and version 0: latest).
struct VersionSelector {
  uint64_t version = 0;
  std::string tag;
};

// CheckpointSummary, StoreStats and GcResult are common value types (the
// client reports them too).
using ::ckpt::BackupInfo;
using ::ckpt::CheckpointSummary;
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
  /// Lineage: "NAME@VERSION" the version was trained from; empty: none.
  /// Recorded as given (callers check its syntax: ValidateParent).
  std::string parent;
};

class Store;

/// The chunks one save stream contributes, not yet committed. Created by
/// Store::BeginUpload for one namespace. Not thread-safe: one stream uses it
/// (different Uploads may be used concurrently). Lifetime: an Upload may
/// outlive the Store that made it. Destroying an uncommitted Upload
/// discards what it wrote (an upload already sealed leaves a pending record
/// that CollectGarbage reclaims).
class Upload {
 public:
  virtual ~Upload() = default;

  /// For each digest, whether the store lacks it (true) or already holds it
  /// in this namespace (false). Digests held are pinned until this Upload is
  /// destroyed: garbage collection will not remove them. A digest already
  /// written by this Upload counts as held.
  virtual absl::StatusOr<std::vector<bool>> FindMissing(absl::Span<const Digest> digests) = 0;

  /// Writes one chunk. Verifies that Digest::Of(data) == digest
  /// (InvalidArgument on mismatch) and its size (<= max_chunk_bytes,
  /// InvalidArgument otherwise). Writing a digest twice is a no-op.
  /// FailedPrecondition after Seal; ResourceExhausted if the write would
  /// leave less than StoreOptions::reserved_disk_bytes free. A store may
  /// write in the background: an I/O error then comes back from a later
  /// PutChunk or from Seal. After a failed write the Upload is broken: later
  /// PutChunk and Seal calls return the same error.
  virtual absl::Status PutChunk(const Digest& digest, absl::Span<const uint8_t> data) = 0;

  /// PutChunk of bytes the Upload may keep (a store that writes in the
  /// background then needs no copy of them).
  virtual absl::Status PutChunk(const Digest& digest, std::string&& data) {
    return PutChunk(digest, absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()),
                                                      data.size()));
  }

  /// Whether this Upload has `digest`, written or pinned.
  virtual bool Has(const Digest& digest) const = 0;

  /// Makes the written chunks durable (RocksDB: finishes and ingests the
  /// upload's SST files) and records them as pending. After Seal, PutChunk fails. Idempotent; a
  /// failed Seal breaks the Upload (see PutChunk).
  virtual absl::Status Seal() = 0;

  /// Bytes written with PutChunk.
  virtual uint64_t bytes_written() const = 0;
};

/// The store. Thread-safe: all methods may be called concurrently. Names
/// are checked with ValidateName (InvalidArgument naming the problem).
class Store {
 public:
  /// Closes the store; Uploads still alive keep what they need of it.
  virtual ~Store() = default;

  /// Opens the store of options.backend: for RADOS, connects to the
  /// cluster and checks the pool (rados_store.h: RadosStore::Open). For
  /// RocksDB, opens (creating if needed, parent directories included) the
  /// store at options.path. Leftover temporary files of a previous process
  /// are removed. InvalidArgument for an empty path, a zero max_chunk_bytes
  /// or a zero RocksDbTuning value (the cache size excepted);
  /// FailedPrecondition (nothing changed) if the store has another on-disk
  /// format version; errors of RocksDB or the file system otherwise (a
  /// directory another store holds open: Internal naming the LOCK file).
  static absl::StatusOr<std::unique_ptr<Store>> Open(const StoreOptions& options);

  /// Starts an upload into `name`'s namespace. InvalidArgument for an
  /// invalid name.
  virtual absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(absl::string_view name) = 0;

  /// Commits a new version of spec.name made of the chunks of `uploads` (all
  /// sealed here if not yet) and chunks they pinned. Every chunk the tree
  /// references must be in one of them (FailedPrecondition naming the tensor
  /// key otherwise). Assigns the next version number, moves `latest`, applies
  /// spec.tags, and returns once the commit is durable (with
  /// StoreOptions::sync_commits). A name's versions are numbered 1, 2, 3, ...
  /// in commit order, skipping none (a refused commit takes no number) and
  /// never reusing one (deleted versions leave holes). The returned
  /// VersionInfo lists the tags, "latest" included.
  /// On any error no version, tag or refcount is written:
  ///  - InvalidArgument: an invalid name, tag ("latest" included), metadata
  ///    or tree, or an upload of another store or another namespace;
  ///  - FailedPrecondition: an upload already committed, a chunk never
  ///    uploaded, or a chunk whose stored length differs from the tree's;
  ///  - ResourceExhausted: the namespace would exceed its quota
  ///    (StoreOptions::namespace_quota_bytes), or `name` would have more
  ///    than kMaxTagsPerName tags.
  /// The uploads' chunks of a refused commit are garbage once the uploads
  /// are destroyed.
  virtual absl::StatusOr<VersionInfo> Commit(CommitSpec spec,
                                             absl::Span<Upload* const> uploads) = 0;

  /// Resolves a selector to a version of `name`, with its tags ("latest" on
  /// the newest). A tag wins over a number; the tag "latest", or version 0
  /// without a tag, is the newest version. NotFound names what is missing
  /// (the checkpoint, the version or the tag); InvalidArgument for an
  /// invalid name or tag.
  virtual absl::StatusOr<VersionInfo> GetVersion(absl::string_view name,
                                                 const VersionSelector& selector) = 0;

  /// The tree of a committed version. NotFound if it does not exist;
  /// InvalidArgument for an invalid name.
  virtual absl::StatusOr<Tree> GetTree(absl::string_view name, uint64_t version) = 0;

  /// A hint that these chunks of `name`'s namespace are read next, in
  /// order: a backend whose reads have latency (RADOS) starts reading them
  /// into a small cache of its own that ReadChunk takes from; bounded
  /// server-wide, never required. Default: nothing.
  virtual void ReadAhead(absl::string_view name, absl::Span<const Digest> digests) {}

  /// Reads one chunk of `name`'s namespace into `out` (resized), verifying its
  /// checksum. DataLoss if the bytes do not match the digest, NotFound if the
  /// chunk is missing. The caller adds checkpoint/version/key context.
  virtual absl::Status ReadChunk(absl::string_view name, const Digest& digest,
                                 std::string* out) = 0;

  /// Bytes that stay valid while `owner` lives.
  struct SharedBytes {
    std::shared_ptr<const void> owner;
    absl::string_view bytes;
  };
  /// ReadChunk without a copy where the store can (RocksDB: its memory-
  /// mapped file, pinned); the default reads into a string of its own.
  virtual absl::StatusOr<SharedBytes> ReadSharedChunk(absl::string_view name,
                                                      const Digest& digest) {
    auto chunk = std::make_shared<std::string>();
    absl::Status status = ReadChunk(name, digest, chunk.get());
    if (!status.ok()) return status;
    const absl::string_view bytes(*chunk);
    return SharedBytes{std::move(chunk), bytes};
  }

  /// ReadSharedChunk of several chunks of `name`'s namespace: one result
  /// per digest, in order, each what ReadSharedChunk returns for it. A store
  /// may read them together (RocksDB: batched lookups from one snapshot,
  /// small chunks read in place through one iterator that all their results
  /// share, so a result may keep the others' bytes, and the chunk files
  /// they are in, alive too). The default reads one at a time.
  virtual std::vector<absl::StatusOr<SharedBytes>> ReadSharedChunks(
      absl::string_view name, absl::Span<const Digest> digests) {
    std::vector<absl::StatusOr<SharedBytes>> out;
    out.reserve(digests.size());
    for (const Digest& digest : digests) out.push_back(ReadSharedChunk(name, digest));
    return out;
  }

  /// How many chunks a reader should ask ReadSharedChunks for at once: more
  /// only where reading them together is cheaper. Default: 1.
  virtual size_t read_batch() const { return 1; }

  /// Checkpoint names starting with `prefix`, in order, after `start_after`
  /// (exclusive; empty: from the start), at most `limit` (0: no limit),
  /// each with its number of versions and its newest one. InvalidArgument
  /// for an invalid prefix (ValidatePrefix).
  virtual absl::StatusOr<std::vector<CheckpointSummary>> ListCheckpoints(
      absl::string_view prefix, absl::string_view start_after, size_t limit) = 0;

  /// Versions of `name` after version `after` (0: from the first), oldest
  /// first, at most `limit`, with their tags. NotFound if `name` has no
  /// version at all (an empty list past its last one); InvalidArgument for
  /// an invalid name. One consistent snapshot per call.
  virtual absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      absl::string_view name, uint64_t after = 0,
      size_t limit = std::numeric_limits<size_t>::max()) = 0;

  /// Deletes a version and decrements its chunks' refcounts, atomically.
  /// NotFound if it does not exist; FailedPrecondition naming the tags if
  /// user tags point at it and !force (force removes them). Returns the
  /// number of chunks now unreferenced (CollectGarbage removes them). Works
  /// on a full disk (may use the reserved space). The version number is not
  /// reused.
  virtual absl::StatusOr<uint64_t> DeleteVersion(absl::string_view name, uint64_t version,
                                                 bool force) = 0;

  /// Points `tag` at an existing version, moving it if it points elsewhere.
  /// InvalidArgument for "latest", an invalid tag (ValidateUserTag) or an
  /// invalid name; NotFound if the version does not exist; ResourceExhausted
  /// if `name` would have more than kMaxTagsPerName tags.
  virtual absl::Status SetTag(absl::string_view name, absl::string_view tag, uint64_t version) = 0;

  /// Removes a tag. NotFound if it does not exist; InvalidArgument for
  /// "latest", an invalid tag or an invalid name.
  virtual absl::Status DeleteTag(absl::string_view name, absl::string_view tag) = 0;

  /// Sets `name`'s retention policy; an off policy (RetentionPolicy{})
  /// removes it. `name` need not have versions yet. InvalidArgument for a bad
  /// name or policy (ValidateRetentionPolicy says why).
  virtual absl::Status SetRetention(absl::string_view name, const RetentionPolicy& policy) = 0;

  /// `name`'s retention policy; an off policy if none is set.
  /// InvalidArgument for an invalid name.
  virtual absl::StatusOr<RetentionPolicy> GetRetention(absl::string_view name) = 0;

  /// Applies `name`'s retention policy: deletes the versions VersionsToPrune
  /// picks, or with `dry_run` only lists them. Returns them, oldest first; a
  /// version that is tagged or deleted meanwhile is kept out of the list.
  /// NotFound if `name` has no versions; InvalidArgument for an invalid name.
  /// Each deletion is atomic on its own: an error part way leaves the
  /// earlier ones done.
  virtual absl::StatusOr<std::vector<uint64_t>> Prune(absl::string_view name, bool dry_run) = 0;

  /// Removes unreferenced chunks and the chunks of dead uploads. Never removes
  /// a chunk a committed version references or a live Upload wrote or pinned.
  /// Returns what became unreachable (GcResult). Collections run one at a
  /// time; commits and reads go on meanwhile. Works on a full disk. An error
  /// part way may leave what was already collected collected.
  virtual absl::StatusOr<GcResult> CollectGarbage() = 0;

  /// Totals of the whole store (counted from one snapshot): checkpoints,
  /// versions, distinct referenced chunks and their bytes, logical bytes
  /// (the sum of the versions' data_bytes), bytes on disk, garbage bytes
  /// (what CollectGarbage would reclaim, dead uploads included) and live
  /// uploads.
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
  /// Commit and DeleteVersion (computed once when the store opens); never
  /// waits for a commit.
  virtual uint64_t NamespaceBytes(absl::string_view ns) = 0;

  /// Where the parts of a multi-part save meet when several servers share
  /// this store (shared_saves.h); nullptr (the default) for a store one
  /// server owns, whose server meets them in memory. Lives as long as the
  /// store.
  virtual SharedSaves* shared_saves() { return nullptr; }
};

}  // namespace ckpt::storage

#endif  // CKPT_STORAGE_STORE_H_
