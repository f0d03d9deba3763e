#ifndef CKPT_STORAGE_RADOS_INTERNAL_H_
#define CKPT_STORAGE_RADOS_INTERNAL_H_

// Internal to the RADOS store (storage/rados_*.cc): the connection its
// operations and uploads share, object names, librados helpers and the
// upload class. Layout and protocol: rados_store.h.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <rados/librados.hpp>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "storage/store.h"

namespace ckpt::storage::internal {

inline constexpr int kShards = 16;
inline constexpr size_t kTreePartBytes = 4 << 20;
inline constexpr size_t kPinsPerObject = 256 * 1024;
inline constexpr char kTouched[] = "ckpt.t";
// Set on a chunk by the commits that use it: chunks only uploads wrote
// cannot be read.
inline constexpr char kCommitted[] = "ckpt.c";
inline constexpr char kLeaseEnd[] = "ckpt.exp";
inline constexpr char kGen[] = "ckpt.gen";
inline constexpr char kLast[] = "ckpt.last";
inline constexpr char kCount[] = "ckpt.count";
inline constexpr char kLatest[] = "ckpt.latest";
inline constexpr char kLatestMs[] = "ckpt.latest_ms";
inline constexpr char kRetention[] = "ckpt.ret";
inline constexpr char kBytes[] = "ckpt.bytes";
inline constexpr char kGlobalNamespace[] = "@ckpt";

/// The status of a librados return code `rc` (negative errno) while doing
/// `what`: ETIMEDOUT and connection errors are Unavailable, ENOENT
/// NotFound, ENOSPC/EDQUOT ResourceExhausted, ECANCELED Aborted (a guard
/// failed), EEXIST AlreadyExists, others Internal.
absl::Status RadosStatus(int rc, absl::string_view what);

int64_t NowMs();

std::string ChunkOid(const Digest& digest);
std::string HeadOid(absl::string_view name);
std::string TreeOid(absl::string_view tree_id, size_t part);
std::string NameShardOid(absl::string_view name);
std::string NameShardOid(int shard);
std::string NamespaceShardOid(absl::string_view ns);
std::string NamespaceShardOid(int shard);
std::string LeaseOid(absl::string_view upload_id, size_t part);
/// "v.<20 digits>", the head's omap key of a version.
std::string VersionOmapKey(uint64_t version);

librados::bufferlist Bytes(absl::string_view s);
librados::bufferlist Decimal(uint64_t v);
/// A decimal xattr value; 0 if absent or malformed.
uint64_t DecimalOf(const std::map<std::string, librados::bufferlist>& attrs, const char* name);

/// A chunk read started ahead of ReadChunk: the operation and its outputs
/// live until the read completes.
struct PendingRead {
  librados::ObjectReadOperation op;
  librados::bufferlist data, marker, unused;
  int marker_rc = 0;
  int read_rc = 0;
  librados::AioCompletion* completion = nullptr;
  /// Waits for the read and releases the completion; its return code.
  int Wait();
  ~PendingRead();
};

/// Reads started by ReadAhead, by namespace and digest; at most kMaxAhead
/// at once server-wide (the oldest is dropped for a new one).
struct ReadAheadCache {
  static constexpr size_t kMaxAhead = 16;
  std::mutex mu;
  std::map<std::pair<std::string, Digest>, std::shared_ptr<PendingRead>> reads;
  std::vector<std::pair<std::string, Digest>> order;  // oldest first
};

/// Connection shared by the store and its live uploads.
struct RadosCore {
  StoreOptions options;
  librados::Rados cluster;
  librados::IoCtx pool;
  librados::IoCtx data;  // the chunks' pool: `pool` unless split
  bool split = false;    // chunks in a pool of their own
  std::mutex mu;         // guards pool and data (IoCtx::dup reads them)

  ~RadosCore();

  /// An IoCtx on the RADOS namespace of checkpoint namespace `ns`.
  librados::IoCtx Ns(absl::string_view ns);
  /// An IoCtx on the RADOS namespace of `ns`'s chunks (in the data pool).
  librados::IoCtx Chunks(absl::string_view ns);
  /// An IoCtx on the store-wide namespace.
  librados::IoCtx Global();

  /// The namespaces registered (sorted).
  absl::StatusOr<std::vector<std::string>> Namespaces();
  /// Registers `name` and its namespace in the listings (idempotent).
  absl::Status Register(absl::string_view name);
  /// Registers a namespace (before an upload writes into it, so that
  /// collections look there).
  absl::Status RegisterNamespace(absl::string_view ns);
  absl::flat_hash_set<std::string> registered;  // guarded by mu
  ReadAheadCache ahead;

 private:
  // A copy of `base` (pool or data) on the RADOS namespace of `ns`.
  librados::IoCtx InNamespace(librados::IoCtx& base, absl::string_view ns);
};

/// Runs the write operations `ops[i]` on objects `oids[i]` concurrently
/// (at most 64 in flight); returns each return code.
std::vector<int> OperateAll(librados::IoCtx& io, const std::vector<std::string>& oids,
                            std::vector<librados::ObjectWriteOperation>& ops);

/// Stats objects `oids` concurrently (at most 64 in flight): their sizes
/// into `sizes`; returns each return code.
std::vector<int> StatAll(librados::IoCtx& io, const std::vector<std::string>& oids,
                         std::vector<uint64_t>* sizes);

/// A checkpoint's head: its xattrs and tags (omap "t.*").
struct Head {
  bool exists = false;
  uint64_t gen = 0;
  uint64_t last = 0;
  uint64_t count = 0;
  uint64_t latest = 0;
  int64_t latest_ms = 0;
  std::map<std::string, uint64_t> tags;
  std::optional<std::string> retention;  // encoded policy
  /// The record of the version asked for, if it exists.
  std::optional<std::string> record;
};

/// Reads `name`'s head in one atomic read, with the record of `version`
/// (0: none).
absl::StatusOr<Head> ReadHead(librados::IoCtx& io, absl::string_view name, uint64_t version);

/// A version's head record: where its tree is, then the version record.
struct StoredVersion {
  std::string tree_id;
  uint32_t tree_parts = 0;
  uint64_t tree_bytes = 0;
  VersionInfo info;
};
std::string EncodeStoredVersion(const StoredVersion& v);
absl::StatusOr<StoredVersion> DecodeStoredVersion(absl::string_view bytes);

/// Reads a tree's parts and decodes it.
absl::StatusOr<Tree> ReadTreeParts(librados::IoCtx& io, const StoredVersion& v);

class RadosUpload final : public Upload {
 public:
  RadosUpload(std::shared_ptr<RadosCore> core, std::string ns);
  /// A stand-in for another server's sealed upload `id` (a staged part of
  /// a multi-part save) with what it wrote and pinned: Commit takes it like
  /// its own; it never writes, renews or drops anything (its server does).
  RadosUpload(std::shared_ptr<RadosCore> core, std::string ns, std::string id,
              absl::flat_hash_map<Digest, uint64_t> written,
              absl::flat_hash_map<Digest, uint64_t> pinned);
  ~RadosUpload() override;

  /// Writes the upload's lease (it counts as live from now on).
  absl::Status Start() { return FlushPins(); }

  absl::StatusOr<std::vector<bool>> FindMissing(absl::Span<const Digest> digests) override;
  absl::Status PutChunk(const Digest& digest, absl::Span<const uint8_t> data) override;
  bool Has(const Digest& digest) const override;
  absl::Status Seal() override;
  uint64_t bytes_written() const override { return bytes_written_; }

  const RadosCore* core() const { return core_.get(); }
  const std::string& ns() const { return ns_; }
  const std::string& id() const { return id_; }
  bool committed() const { return committed_; }
  /// Renews the lease if a third of it has passed (a sealed upload waiting
  /// for the other parts of its save). Once sealed, Renew and MarkCommitted
  /// may be called from different threads.
  absl::Status Renew();
  /// After its commit: drops its lease (the version references what it
  /// uses; the rest is garbage for the next collection).
  void MarkCommitted();
  /// Lengths of the chunks this upload wrote / found present.
  const absl::flat_hash_map<Digest, uint64_t>& written() const { return written_; }
  const absl::flat_hash_map<Digest, uint64_t>& pinned() const { return pinned_; }

 private:
  // Appends the pins not yet recorded to the lease objects and renews the
  // lease.
  absl::Status FlushPins();
  // Waits for the chunk writes in flight; the first error breaks the upload.
  absl::Status Drain(size_t keep);
  void DropLease();
  // Removes the chunks this upload wrote for which `which` holds, unless
  // touched since (found by another save).
  void RemoveWritten(const std::function<bool(const Digest&)>& which);

  std::shared_ptr<RadosCore> core_;
  std::string ns_;
  std::string id_;
  librados::IoCtx io_;      // leases
  librados::IoCtx chunks_;  // chunks
  absl::flat_hash_map<Digest, uint64_t> written_;
  absl::flat_hash_map<Digest, uint64_t> pinned_;
  absl::flat_hash_map<Digest, uint64_t> write_touch_;  // ckpt.t of each write
  std::vector<Digest> unflushed_;
  absl::Time oldest_unflushed_;
  size_t pins_recorded_ = 0;
  bool lease_written_ = false;
  absl::Time lease_renewed_;
  struct InFlight {
    librados::AioCompletion* completion;
    Digest digest;
  };
  std::vector<InFlight> in_flight_;
  uint64_t bytes_written_ = 0;
  bool sealed_ = false;
  bool committed_ = false;
  absl::Status broken_;
  std::mutex lease_mu_;  // Renew and MarkCommitted after the seal
};

/// The RADOS store's meeting point of multi-part saves (rados_saves.cc).
std::unique_ptr<SharedSaves> MakeSharedSaves(std::shared_ptr<RadosCore> core);

}  // namespace ckpt::storage::internal

#endif  // CKPT_STORAGE_RADOS_INTERNAL_H_
