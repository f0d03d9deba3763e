#ifndef CKPT_STORAGE_RADOS_STORE_H_
#define CKPT_STORAGE_RADOS_STORE_H_

// The Store over a Ceph RADOS pool (librados), for several stateless
// ckpt-servers sharing one cluster: any server answers any request, a commit
// through one is visible through all at once.
//
// Layout. Every object of a checkpoint namespace NS lives in the RADOS
// namespace `<namespace_prefix>NS` of the pool; store-wide objects in
// `<namespace_prefix>@ckpt` ('@' is never in a checkpoint name). The chunks
// (c.*) may live in a pool of their own (RadosOptions::data_pool, same
// namespaces): they use no omap, so that pool may be erasure coded; the
// rest uses omap and needs a replicated pool.
//
//   c.<32 hex>         a chunk: its bytes (<= max_chunk_bytes, 4 MiB: far
//                      below the OSDs' 128 MiB object limit), xattr ckpt.t =
//                      when it was last written, found by a save or
//                      committed (Unix ms). Content-addressed: a rewrite
//                      writes the same bytes. No omap, so the pool may be
//                      erasure coded.
//   h.<name>           a checkpoint's head, the commit point: omap
//                      "v.<20-digit version>" -> its record (tree id and
//                      parts, then storage/codec's version record) and
//                      "t.<tag>" -> version; xattrs ckpt.gen (bumped by every
//                      change: the compare-and-swap guard), ckpt.last (the
//                      highest number ever given: never reused), ckpt.count,
//                      ckpt.latest, ckpt.latest_ms and ckpt.ret (retention).
//                      Bounded: kMaxVersionsPerName live versions and
//                      kMaxTagsPerName tags (the size RGW keeps its bucket
//                      index shards under).
//   m.<tree id>.<i>    a version's tree (storage/codec), in parts of at most
//                      4 MiB; written before the commit under a random id.
//   n.<0-15>           the names of the namespace: omap name -> "" sharded by
//                      a hash of the name (a name is added before its first
//                      commit, so listings never miss one).
//   u.<upload id>.<i>  a live upload's lease and pins: the digests it wrote
//                      or found (16 bytes each, 256k per object); xattr
//                      ckpt.exp on part 0 = when the lease ends (renewed as
//                      the upload is used).
//   s.<32 hex>         a multi-part save staged (key: digest of name and
//                      save_id): xattrs ckpt.round (tells apart saves that
//                      reuse a save_id), ckpt.ws, ckpt.dl (deadline),
//                      ckpt.st ("o" open, "k<ms>" claimed, "c" committed,
//                      "f" failed), ckpt.exp (removable after); omap
//                      "r.<rank>" -> the rank's record id (at most
//                      world_size keys), "out" -> the outcome, "prev" -> the
//                      outcome of the save before under this save_id.
//   r.<id>.<i>         a staged part's record (its fields, tree and the
//                      digests its upload wrote and pinned), in parts of at
//                      most 4 MiB; xattr ckpt.exp.
//   q                  xattr ckpt.bytes: the bytes of the namespace's chunks
//                      (what its quota limits): added by commits, set again
//                      by each garbage collection.
//   @ckpt/ns.<0-15>    the namespaces: omap NS -> "".
//   @ckpt/format       xattr ckpt.format: the layout version (1); ckpt.data:
//                      the chunks' pool (written once, by the first server).
//   @ckpt/gc           the lock one garbage collection at a time holds.
//
// Commit: the chunks of the tree must be in the uploads (written, or found
// present and pinned); every one of them is touched (assert it exists, set
// ckpt.t) so that a collection that did not see the new version cannot
// remove it; the tree parts are written; then one atomic write on the head,
// guarded by ckpt.gen (or an exclusive create for a first version), adds
// the record and the tags and moves ckpt.last/latest/count. A guard that
// fails (another server committed meanwhile) reads the head again and
// retries with the next number: versions are gap-free and never reused,
// without a lock held anywhere. A server killed at any point leaves no
// version, only objects that garbage collection reclaims.
//
// Multi-part saves (shared_saves.h): each server writes the records of the
// parts it received, then adds the rank to s.<key> by a write guarded by
// the round and the open state. The server whose rank completes the set
// claims the save ("o" -> "k", guarded: one claim wins), reads every part's
// record, commits as above with stand-ins for the other servers' uploads
// (their leases, renewed by their servers while the parts wait, keep the
// chunks), and writes the outcome. The other servers poll s.<key> for it;
// past the deadline a poller fails the save ("o" -> "f", guarded), a
// cancelled rank does the same at once, and a claim unanswered for an
// upload lease ends as unknown (Unavailable).
//
// Garbage collection (one at a time, cluster-wide, under the lock): for
// each namespace, the chunks referenced by committed versions (their trees)
// and pinned by live uploads (unexpired leases) are kept; any other chunk
// (and tree part) is removed by a write guarded by "ckpt.t older than the
// collection's start minus gc_grace", so a chunk touched since (a save found
// it, a commit used it) survives: an upload pins a chunk before touching it,
// so the collection either sees the pin or sees the touch. Expired leases
// are deleted (the chunks of a server that died become collectable), and so
// are staged saves and part records past their ckpt.exp.
//
// Every RADOS call times out after RadosOptions::op_timeout (Unavailable
// naming the cluster); librados reconnects by itself, so the server
// recovers without a restart when the cluster returns.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/store.h"

namespace ckpt::storage {

namespace internal {
struct RadosCore;
}

/// Most live versions one checkpoint name may have on RADOS (its head's
/// omap stays bounded): a commit past it gets ResourceExhausted.
inline constexpr uint64_t kMaxVersionsPerName = 100000;

class RadosStore final : public Store {
 public:
  /// What Store::Open does for StoreBackend::kRados: connects as
  /// options.rados.user with options.rados.conf_file, checks the pool
  /// (FailedPrecondition if it does not exist) and the layout version.
  /// Unavailable if the cluster cannot be reached within op_timeout.
  static absl::StatusOr<std::unique_ptr<RadosStore>> Open(const StoreOptions& options);

  ~RadosStore() override;

  absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(absl::string_view name) override;
  absl::StatusOr<VersionInfo> Commit(CommitSpec spec, absl::Span<Upload* const> uploads) override;
  absl::StatusOr<VersionInfo> GetVersion(absl::string_view name,
                                         const VersionSelector& selector) override;
  absl::StatusOr<Tree> GetTree(absl::string_view name, uint64_t version) override;
  /// Starts reading up to 16 chunks (server-wide) ahead of ReadChunk.
  void ReadAhead(absl::string_view name, absl::Span<const Digest> digests) override;
  absl::Status ReadChunk(absl::string_view name, const Digest& digest, std::string* out) override;
  absl::StatusOr<std::vector<CheckpointSummary>> ListCheckpoints(absl::string_view prefix,
                                                                 absl::string_view start_after,
                                                                 size_t limit) override;
  absl::StatusOr<std::vector<VersionInfo>> ListVersions(absl::string_view name, uint64_t after,
                                                        size_t limit) override;
  /// Returns the number of the version's chunks that no other version of
  /// its namespace uses (reads every tree of the namespace).
  absl::StatusOr<uint64_t> DeleteVersion(absl::string_view name, uint64_t version,
                                         bool force) override;
  absl::Status SetTag(absl::string_view name, absl::string_view tag, uint64_t version) override;
  absl::Status DeleteTag(absl::string_view name, absl::string_view tag) override;
  absl::Status SetRetention(absl::string_view name, const RetentionPolicy& policy) override;
  absl::StatusOr<RetentionPolicy> GetRetention(absl::string_view name) override;
  absl::StatusOr<std::vector<uint64_t>> Prune(absl::string_view name, bool dry_run) override;
  absl::StatusOr<GcResult> CollectGarbage() override;
  /// Counted by listing the store's objects and reading every version's
  /// tree (the collection's mark phase without the sweep): costs what a
  /// collection costs.
  absl::StatusOr<StoreStats> Stats() override;
  /// FailedPrecondition: a RADOS pool is backed up with Ceph's tools
  /// (`rados export`, pool snapshots), not by a server.
  absl::StatusOr<BackupInfo> Backup(const std::string& dir) override;
  /// Exact as of the last collection; since then, commits add the bytes
  /// they wrote and deletes subtract what no other version uses (a chunk
  /// deleted, then used again before a collection, is not counted again).
  uint64_t NamespaceBytes(absl::string_view ns) override;
  /// Parts of a multi-part save may reach different servers.
  SharedSaves* shared_saves() override { return saves_.get(); }

  /// Chunk objects in the store's namespaces (referenced or not): what the
  /// conformance suite counts garbage collection against.
  absl::StatusOr<uint64_t> CountChunkObjects();

 private:
  explicit RadosStore(std::shared_ptr<internal::RadosCore> core);
  std::shared_ptr<internal::RadosCore> core_;
  std::unique_ptr<SharedSaves> saves_;
};

}  // namespace ckpt::storage

#endif  // CKPT_STORAGE_RADOS_STORE_H_
