// The RADOS store's operations but garbage collection and statistics
// (rados_gc.cc). Layout and protocol: rados_store.h.

#include "storage/rados_store.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "common/retention.h"
#include "common/status_macros.h"
#include "storage/codec.h"
#include "storage/rados_internal.h"
#include "storage/store_rules.h"

namespace ckpt::storage {

using internal::Bytes;
using internal::ChunkOid;
using internal::Decimal;
using internal::Head;
using internal::HeadOid;
using internal::NowMs;
using internal::Quote;
using internal::RadosCore;
using internal::RadosStatus;
using internal::RadosUpload;
using internal::ReadHead;
using internal::StoredVersion;
using internal::VersionContext;
using internal::VersionOmapKey;

namespace {

constexpr int kRadosFormat = 1;
constexpr int kCasAttempts = 100;

// A changed head (another server's commit, delete or tag) makes a guarded
// write fail with ECANCELED, a racing first commit with EEXIST: read again.
bool Conflict(int rc) { return rc == -ECANCELED || rc == -EEXIST; }

void Backoff(int attempt) {
  std::this_thread::sleep_for(std::chrono::microseconds(100 * std::min(attempt, 50)));
}

// Guards a write on a head read as `head`: unchanged since, or still absent.
void Guard(librados::ObjectWriteOperation& op, const Head& head) {
  if (head.exists) {
    op.cmpxattr(internal::kGen, LIBRADOS_CMPXATTR_OP_EQ, head.gen);
  } else {
    op.create(true);
  }
  op.setxattr(internal::kGen, Decimal(head.gen + 1));
}

absl::StatusOr<StoredVersion> RecordOf(const Head& head, absl::string_view name, uint64_t version) {
  if (!head.record.has_value()) {
    if (head.count == 0) return internal::CheckpointNotFound(name);
    return internal::VersionNotFound(name, version);
  }
  auto stored = internal::DecodeStoredVersion(*head.record);
  if (!stored.ok()) return Annotate(stored.status(), VersionContext(name, version));
  stored->info.name = std::string(name);
  stored->info.version = version;
  return stored;
}

std::vector<std::string> TagsOf(const Head& head, uint64_t version) {
  std::vector<std::string> tags;
  for (const auto& [tag, v] : head.tags) {
    if (v == version) tags.push_back(tag);
  }
  return internal::WithLatest(std::move(tags), version == head.latest);
}

// The highest live version below `below` (0: none), reading the head's
// version keys backwards a window at a time.
absl::StatusOr<uint64_t> HighestBelow(librados::IoCtx& io, absl::string_view name, uint64_t below) {
  constexpr uint64_t kWindow = 1024;
  while (below > 1) {
    const uint64_t from = below > kWindow ? below - kWindow : 1;
    std::map<std::string, librados::bufferlist> keys;
    bool more = false;
    const int rc = io.omap_get_vals2(HeadOid(name), VersionOmapKey(from - 1), "v.",
                                     static_cast<uint64_t>(below - from), &keys, &more);
    CKPT_RETURN_IF_ERROR(RadosStatus(rc, absl::StrCat("reading versions of ", Quote(name))));
    uint64_t best = 0;
    for (const auto& [key, unused] : keys) {
      uint64_t v = 0;
      if (absl::SimpleAtoi(key.substr(2), &v) && v < below) best = std::max(best, v);
    }
    if (best != 0) return best;
    below = from;
  }
  return 0;
}

// Adds `delta` to the namespace's bytes (a guarded read-modify-write;
// best effort: each collection sets them again).
void AddNamespaceBytes(librados::IoCtx& io, int64_t delta) {
  for (int attempt = 0; delta != 0 && attempt < kCasAttempts; ++attempt) {
    librados::bufferlist value;
    const int got = io.getxattr("q", internal::kBytes, value);
    uint64_t used = 0;
    if (got >= 0) absl::SimpleAtoi(value.to_str(), &used);
    const uint64_t next =
        delta < 0 && static_cast<uint64_t>(-delta) > used ? 0 : used + static_cast<uint64_t>(delta);
    librados::ObjectWriteOperation op;
    if (got >= 0) {
      op.cmpxattr(internal::kBytes, LIBRADOS_CMPXATTR_OP_EQ, used);
    } else {
      op.create(true);
    }
    op.setxattr(internal::kBytes, Decimal(next));
    if (io.operate("q", &op) >= 0) return;
    Backoff(attempt);
  }
}

// The chunks the versions of `name` use.
absl::StatusOr<absl::flat_hash_set<Digest>> ChunksOfName(librados::IoCtx& io,
                                                         absl::string_view name) {
  absl::flat_hash_set<Digest> out;
  std::string start;
  for (;;) {
    std::map<std::string, librados::bufferlist> page;
    bool more = false;
    const int rc = io.omap_get_vals2(HeadOid(name), start, "v.", 1000, &page, &more);
    if (rc == -ENOENT) break;
    CKPT_RETURN_IF_ERROR(RadosStatus(rc, absl::StrCat("reading versions of ", Quote(name))));
    for (const auto& [key, value] : page) {
      CKPT_ASSIGN_OR_RETURN(StoredVersion v, internal::DecodeStoredVersion(value.to_str()));
      auto tree = internal::ReadTreeParts(io, v);
      if (absl::IsNotFound(tree.status())) continue;
      CKPT_RETURN_IF_ERROR(tree.status());
      for (const Node& node : *tree) out.insert(node.data.chunks.begin(), node.data.chunks.end());
    }
    if (!more || page.empty()) break;
    start = page.rbegin()->first;
  }
  return out;
}

// The chunks the versions of every name of the namespace use.
absl::StatusOr<absl::flat_hash_set<Digest>> ChunksOfNamespace(librados::IoCtx& io) {
  absl::flat_hash_set<Digest> out;
  for (int shard = 0; shard < internal::kShards; ++shard) {
    std::string after;
    for (;;) {
      std::map<std::string, librados::bufferlist> names;
      bool more = false;
      const int rc = io.omap_get_vals2(internal::NameShardOid(shard), after, 1000, &names, &more);
      if (rc == -ENOENT) break;
      CKPT_RETURN_IF_ERROR(RadosStatus(rc, "listing checkpoints"));
      for (const auto& [name, unused] : names) {
        CKPT_ASSIGN_OR_RETURN(absl::flat_hash_set<Digest> chunks, ChunksOfName(io, name));
        out.insert(chunks.begin(), chunks.end());
      }
      if (!more || names.empty()) break;
      after = names.rbegin()->first;
    }
  }
  return out;
}

}  // namespace

RadosStore::~RadosStore() = default;

absl::StatusOr<std::unique_ptr<RadosStore>> RadosStore::Open(const StoreOptions& options) {
  if (options.max_chunk_bytes == 0) return absl::InvalidArgumentError("max_chunk_bytes is 0");
  const RadosOptions& r = options.rados;
  if (r.pool.empty()) return absl::InvalidArgumentError("RADOS pool name is empty");
  if (r.op_timeout <= absl::ZeroDuration() || r.upload_lease <= absl::ZeroDuration() ||
      r.gc_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("RADOS timeout, lease and grace must be positive");
  }
  auto core = std::make_shared<RadosCore>();
  core->options = options;
  const std::string who = absl::StrCat("client.", r.user);
  const std::string where =
      absl::StrCat("RADOS cluster (", r.conf_file.empty() ? "default ceph.conf" : r.conf_file,
                   ", user ", r.user, ")");
  CKPT_RETURN_IF_ERROR(RadosStatus(core->cluster.init2(who.c_str(), "ceph", 0),
                                   absl::StrCat("initialising the ", where)));
  CKPT_RETURN_IF_ERROR(
      RadosStatus(core->cluster.conf_read_file(r.conf_file.empty() ? nullptr : r.conf_file.c_str()),
                  absl::StrCat("reading ", r.conf_file.empty() ? "ceph.conf" : r.conf_file)));
  if (!r.keyring.empty()) core->cluster.conf_set("keyring", r.keyring.c_str());
  const std::string seconds =
      absl::StrCat(std::max<int64_t>(1, absl::ToInt64Seconds(r.op_timeout)));
  for (const char* key : {"rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout"}) {
    core->cluster.conf_set(key, seconds.c_str());
  }
  const int rc = core->cluster.connect();
  if (rc < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to the ", where, ": ", std::strerror(-rc)));
  }
  const int pool_rc = core->cluster.ioctx_create(r.pool.c_str(), core->pool);
  if (pool_rc == -ENOENT) {
    return absl::FailedPreconditionError(absl::StrCat("RADOS pool ", Quote(r.pool),
                                                      " does not exist (create it: ceph osd pool "
                                                      "create ",
                                                      r.pool, ")"));
  }
  CKPT_RETURN_IF_ERROR(RadosStatus(pool_rc, absl::StrCat("opening pool ", Quote(r.pool))));
  core->split = !r.data_pool.empty() && r.data_pool != r.pool;
  const std::string data_pool = core->split ? r.data_pool : r.pool;
  if (core->split) {
    const int data_rc = core->cluster.ioctx_create(r.data_pool.c_str(), core->data);
    if (data_rc == -ENOENT) {
      return absl::FailedPreconditionError(
          absl::StrCat("RADOS data pool ", Quote(r.data_pool), " does not exist"));
    }
    CKPT_RETURN_IF_ERROR(
        RadosStatus(data_rc, absl::StrCat("opening data pool ", Quote(r.data_pool))));
  } else {
    core->data.dup(core->pool);
  }
  // The layout version and the chunks' pool: written by the first server
  // (one exclusive create), checked by the rest.
  librados::IoCtx global = core->Global();
  librados::ObjectWriteOperation first;
  first.create(true);
  first.setxattr("ckpt.format", Decimal(kRadosFormat));
  first.setxattr("ckpt.data", Bytes(data_pool));
  const int created = global.operate("format", &first);
  if (created != -EEXIST) {
    CKPT_RETURN_IF_ERROR(RadosStatus(created, "writing the layout version"));
  } else {
    std::map<std::string, librados::bufferlist> attrs;
    CKPT_RETURN_IF_ERROR(
        RadosStatus(global.getxattrs("format", attrs), "reading the layout version"));
    const std::string format = attrs["ckpt.format"].to_str();
    if (format != absl::StrCat(kRadosFormat)) {
      return absl::FailedPreconditionError(absl::StrCat("RADOS pool ", Quote(r.pool),
                                                        " holds layout version ", format,
                                                        "; this server reads ", kRadosFormat));
    }
    // Stores made before data pools keep their chunks in `pool`.
    const std::string chosen = attrs.count("ckpt.data") ? attrs["ckpt.data"].to_str() : r.pool;
    if (chosen != data_pool) {
      return absl::FailedPreconditionError(
          absl::StrCat("the store in RADOS pool ", Quote(r.pool), " keeps its chunks in pool ",
                       Quote(chosen), ", not ", Quote(data_pool), ": give --rados-data-pool ",
                       chosen == r.pool ? "nothing" : chosen));
    }
  }
  return std::unique_ptr<RadosStore>(new RadosStore(std::move(core)));
}

absl::StatusOr<std::unique_ptr<Upload>> RadosStore::BeginUpload(absl::string_view name) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  CKPT_RETURN_IF_ERROR(core_->RegisterNamespace(NamespaceOf(name)));
  auto up = std::make_unique<RadosUpload>(core_, std::string(NamespaceOf(name)));
  CKPT_RETURN_IF_ERROR(up->Start());
  return std::unique_ptr<Upload>(std::move(up));
}

RadosStore::RadosStore(std::shared_ptr<RadosCore> core)
    : core_(std::move(core)), saves_(internal::MakeSharedSaves(core_)) {}

absl::StatusOr<VersionInfo> RadosStore::Commit(CommitSpec spec, absl::Span<Upload* const> uploads) {
  const std::string name = spec.name;
  CKPT_RETURN_IF_ERROR(internal::ValidateCommitSpec(spec, core_->options.max_chunk_bytes));
  const std::string ns(NamespaceOf(name));
  std::vector<RadosUpload*> ups;
  for (Upload* u : uploads) {
    auto* up = dynamic_cast<RadosUpload*>(u);
    if (up == nullptr || up->core() != core_.get()) {
      return absl::InvalidArgumentError("upload does not belong to this store");
    }
    if (up->ns() != ns) {
      return absl::InvalidArgumentError(absl::StrCat("upload for namespace ", Quote(up->ns()),
                                                     " cannot commit into ", Quote(name)));
    }
    if (up->committed()) return absl::FailedPreconditionError("upload was already committed");
    if (std::find(ups.begin(), ups.end(), up) == ups.end()) ups.push_back(up);
  }
  for (RadosUpload* up : ups) CKPT_RETURN_IF_ERROR(Annotate(up->Seal(), "sealing upload"));

  // Every chunk from an upload, with its length; new bytes: those written.
  const auto digests = internal::DistinctDigests(spec.tree);
  absl::flat_hash_map<Digest, uint64_t> lengths;
  uint64_t new_bytes = 0;
  for (const auto& [d, node] : digests) {
    bool found = false;
    for (const RadosUpload* up : ups) {
      if (auto it = up->written().find(d); it != up->written().end()) {
        lengths[d] = it->second;
        new_bytes += it->second;
        found = true;
        break;
      }
      if (auto it = up->pinned().find(d); it != up->pinned().end()) {
        lengths[d] = it->second;
        found = true;
        break;
      }
    }
    if (!found) return internal::ChunkNeverUploaded(spec.tree, node, d);
  }
  CKPT_RETURN_IF_ERROR(internal::CheckChunkLengths(spec.tree, lengths));
  CKPT_RETURN_IF_ERROR(CheckQuota(core_->options, name, NamespaceBytes(ns), new_bytes));

  librados::IoCtx io = core_->Ns(ns);
  // Touch every chunk: a collection that has not seen this version keeps
  // what was touched after it started.
  {
    librados::IoCtx chunks = core_->Chunks(ns);
    std::vector<std::string> oids;
    std::vector<librados::ObjectWriteOperation> ops(digests.size());
    const librados::bufferlist now = Decimal(NowMs());
    for (size_t i = 0; i < digests.size(); ++i) {
      oids.push_back(ChunkOid(digests[i].first));
      ops[i].assert_exists();
      ops[i].setxattr(internal::kTouched, now);
      ops[i].setxattr(internal::kCommitted, Bytes("1"));
    }
    const std::vector<int> rcs = internal::OperateAll(chunks, oids, ops);
    for (size_t i = 0; i < digests.size(); ++i) {
      if (rcs[i] == -ENOENT) {
        return absl::FailedPreconditionError(absl::StrCat(
            "tensor ", Quote(FlattenedKeys(spec.tree)[digests[i].second]), ": chunk ",
            digests[i].first.Hex(),
            " was removed by garbage collection before the commit (the upload outlived its "
            "lease); save again"));
      }
      CKPT_RETURN_IF_ERROR(RadosStatus(rcs[i], "touching the version's chunks"));
    }
  }

  // The tree, under a fresh id.
  StoredVersion stored;
  {
    static std::atomic<uint64_t> counter{0};
    stored.tree_id = Digest::Of(absl::StrCat(name, ":", NowMs(), ":", counter++, ":",
                                             reinterpret_cast<uintptr_t>(&spec)))
                         .Hex();
    const std::string bytes = EncodeTree(spec.tree);
    stored.tree_bytes = bytes.size();
    stored.tree_parts = static_cast<uint32_t>((bytes.size() + internal::kTreePartBytes - 1) /
                                              internal::kTreePartBytes);
    if (stored.tree_parts == 0) stored.tree_parts = 1;
    std::vector<std::string> oids;
    std::vector<librados::ObjectWriteOperation> ops(stored.tree_parts);
    const librados::bufferlist now = Decimal(NowMs());
    for (uint32_t p = 0; p < stored.tree_parts; ++p) {
      const size_t off = p * internal::kTreePartBytes;
      oids.push_back(internal::TreeOid(stored.tree_id, p));
      ops[p].write_full(Bytes(absl::string_view(bytes).substr(off, internal::kTreePartBytes)));
      ops[p].setxattr(internal::kTouched, now);
    }
    for (int rc : internal::OperateAll(io, oids, ops)) {
      CKPT_RETURN_IF_ERROR(RadosStatus(rc, absl::StrCat("writing the tree of ", Quote(name))));
    }
  }
  CKPT_RETURN_IF_ERROR(core_->Register(name));

  VersionInfo info = internal::NewVersionInfo(spec, 0, new_bytes);
  for (int attempt = 0;; ++attempt) {
    CKPT_ASSIGN_OR_RETURN(Head head, ReadHead(io, name, 0));
    if (head.count >= kMaxVersionsPerName) {
      return absl::ResourceExhaustedError(absl::StrCat(Quote(name), " has ", head.count,
                                                       " versions, the most one name may have; "
                                                       "delete or prune some first"));
    }
    if (!spec.tags.empty()) {
      absl::flat_hash_set<std::string> all;
      for (const auto& [tag, v] : head.tags) all.insert(tag);
      for (const std::string& tag : spec.tags) all.insert(tag);
      if (all.size() > kMaxTagsPerName) return internal::TooManyTags(name);
    }
    info.version = head.last + 1;
    stored.info = info;
    std::map<std::string, librados::bufferlist> entries;
    entries[VersionOmapKey(info.version)] = Bytes(internal::EncodeStoredVersion(stored));
    for (const std::string& tag : spec.tags) entries["t." + tag] = Decimal(info.version);
    librados::ObjectWriteOperation op;
    Guard(op, head);
    op.setxattr(internal::kLast, Decimal(info.version));
    op.setxattr(internal::kCount, Decimal(head.count + 1));
    op.setxattr(internal::kLatest, Decimal(info.version));
    op.setxattr(internal::kLatestMs, Decimal(info.create_time_ms));
    op.omap_set(entries);
    const int rc = io.operate(HeadOid(name), &op);
    if (rc >= 0) break;
    if (!Conflict(rc) || attempt == kCasAttempts) {
      return RadosStatus(rc, absl::StrCat("committing ", VersionContext(name, info.version)));
    }
    Backoff(attempt);
  }
  AddNamespaceBytes(io, static_cast<int64_t>(new_bytes));
  for (RadosUpload* up : ups) up->MarkCommitted();
  info.tags = internal::WithLatest(std::move(spec.tags), /*is_latest=*/true);
  return info;
}

absl::StatusOr<VersionInfo> RadosStore::GetVersion(absl::string_view name,
                                                   const VersionSelector& selector) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  librados::IoCtx io = core_->Ns(NamespaceOf(name));
  // A number: one read of the head with its record; a tag or latest: the
  // head first, to know which record.
  const bool by_number = selector.tag.empty() && selector.version != 0;
  CKPT_ASSIGN_OR_RETURN(Head head, ReadHead(io, name, by_number ? selector.version : 0));
  uint64_t version = selector.version;
  if (!selector.tag.empty()) {
    CKPT_RETURN_IF_ERROR(ValidateTag(selector.tag));
    if (selector.tag == kLatestTag) {
      version = 0;
    } else {
      auto it = head.tags.find(selector.tag);
      if (it == head.tags.end()) {
        if (head.count == 0) return internal::CheckpointNotFound(name);
        return internal::TagNotFound(name, selector.tag);
      }
      version = it->second;
    }
  }
  if (version == 0) {
    if (head.count == 0) return internal::CheckpointNotFound(name);
    version = head.latest;
  }
  if (!by_number) {
    CKPT_ASSIGN_OR_RETURN(head, ReadHead(io, name, version));
  }
  CKPT_ASSIGN_OR_RETURN(StoredVersion stored, RecordOf(head, name, version));
  stored.info.tags = TagsOf(head, version);
  return stored.info;
}

absl::StatusOr<Tree> RadosStore::GetTree(absl::string_view name, uint64_t version) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  librados::IoCtx io = core_->Ns(NamespaceOf(name));
  CKPT_ASSIGN_OR_RETURN(Head head, ReadHead(io, name, version));
  CKPT_ASSIGN_OR_RETURN(StoredVersion stored, RecordOf(head, name, version));
  auto tree = internal::ReadTreeParts(io, stored);
  if (absl::IsNotFound(tree.status())) return internal::VersionNotFound(name, version);
  if (!tree.ok()) return Annotate(tree.status(), VersionContext(name, version));
  return tree;
}

void RadosStore::ReadAhead(absl::string_view name, absl::Span<const Digest> digests) {
  if (!ValidateName(name).ok()) return;
  const std::string ns(NamespaceOf(name));
  internal::ReadAheadCache& cache = core_->ahead;
  librados::IoCtx io = core_->Chunks(ns);
  std::vector<std::shared_ptr<internal::PendingRead>> dropped;
  {
    std::lock_guard<std::mutex> lock(cache.mu);
    for (const Digest& digest : digests) {
      auto key = std::make_pair(ns, digest);
      if (cache.reads.count(key)) continue;
      if (cache.order.size() >= internal::ReadAheadCache::kMaxAhead) {
        auto it = cache.reads.find(cache.order.front());
        if (it != cache.reads.end()) {
          dropped.push_back(std::move(it->second));
          cache.reads.erase(it);
        }
        cache.order.erase(cache.order.begin());
      }
      auto read = std::make_shared<internal::PendingRead>();
      read->op.getxattr(internal::kCommitted, &read->marker, &read->marker_rc);
      read->op.read(0, core_->options.max_chunk_bytes + 1, &read->data, &read->read_rc);
      read->completion = librados::Rados::aio_create_completion();
      if (io.aio_operate(ChunkOid(digest), read->completion, &read->op, &read->unused) < 0) {
        continue;  // ReadChunk reads it itself
      }
      cache.reads.emplace(key, std::move(read));
      cache.order.push_back(std::move(key));
    }
  }
  // Dropped reads finish (and are released) outside the lock.
  dropped.clear();
}

absl::Status RadosStore::ReadChunk(absl::string_view name, const Digest& digest, std::string* out) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  const absl::string_view ns = NamespaceOf(name);
  std::shared_ptr<internal::PendingRead> read;
  {
    internal::ReadAheadCache& cache = core_->ahead;
    std::lock_guard<std::mutex> lock(cache.mu);
    const auto key = std::make_pair(std::string(ns), digest);
    if (auto it = cache.reads.find(key); it != cache.reads.end()) {
      read = std::move(it->second);
      cache.reads.erase(it);
      cache.order.erase(std::find(cache.order.begin(), cache.order.end(), key));
    }
  }
  if (read == nullptr) {
    // Only chunks a commit used: one read of the marker and the bytes.
    read = std::make_shared<internal::PendingRead>();
    read->op.getxattr(internal::kCommitted, &read->marker, &read->marker_rc);
    read->op.read(0, core_->options.max_chunk_bytes + 1, &read->data, &read->read_rc);
    librados::IoCtx io = core_->Chunks(ns);
    read->completion = librados::Rados::aio_create_completion();
    const int started =
        io.aio_operate(ChunkOid(digest), read->completion, &read->op, &read->unused);
    if (started < 0) {
      return RadosStatus(started, absl::StrCat("reading chunk ", digest.Hex()));
    }
  }
  const int rc = read->Wait();
  if (rc == -ENOENT || rc == -ENODATA || read->marker_rc < 0) {
    return internal::ChunkNotFound(ns, digest);
  }
  CKPT_RETURN_IF_ERROR(RadosStatus(rc, absl::StrCat("reading chunk ", digest.Hex())));
  out->assign(read->data.c_str(), read->data.length());
  return internal::VerifyChunk(digest, out->size(), out);
}

absl::StatusOr<std::vector<CheckpointSummary>> RadosStore::ListCheckpoints(
    absl::string_view prefix, absl::string_view start_after, size_t limit) {
  CKPT_RETURN_IF_ERROR(ValidatePrefix(prefix));
  if (limit == 0) limit = std::numeric_limits<size_t>::max();
  std::vector<std::string> namespaces;
  if (const size_t slash = prefix.find('/'); slash != absl::string_view::npos) {
    namespaces.emplace_back(prefix.substr(0, slash));
  } else {
    CKPT_ASSIGN_OR_RETURN(std::vector<std::string> all, core_->Namespaces());
    for (std::string& ns : all) {
      if (absl::StartsWith(ns, prefix)) namespaces.push_back(std::move(ns));
    }
  }
  std::vector<CheckpointSummary> out;
  for (const std::string& ns : namespaces) {
    if (out.size() >= limit) break;
    librados::IoCtx io = core_->Ns(ns);
    std::string after(start_after);
    for (;;) {
      // The next names of the namespace after `after`: each shard's first
      // few, merged.
      const size_t want = std::min<size_t>(limit - out.size(), 999) + 1;
      std::vector<std::string> names;
      bool any_more = false;
      for (int shard = 0; shard < internal::kShards; ++shard) {
        std::map<std::string, librados::bufferlist> page;
        bool more = false;
        const int rc = io.omap_get_vals2(internal::NameShardOid(shard), after, std::string(prefix),
                                         want, &page, &more);
        if (rc == -ENOENT) continue;
        CKPT_RETURN_IF_ERROR(RadosStatus(rc, "listing checkpoints"));
        for (auto& [n, unused] : page) names.push_back(n);
        any_more = any_more || more;
      }
      std::sort(names.begin(), names.end());
      if (names.size() > want) names.resize(want);
      for (const std::string& n : names) {
        if (out.size() >= limit) break;
        CKPT_ASSIGN_OR_RETURN(Head head, ReadHead(io, n, 0));
        if (head.count == 0) continue;
        CheckpointSummary s;
        s.name = n;
        s.latest_version = head.latest;
        s.num_versions = head.count;
        s.latest_create_time_ms = head.latest_ms;
        out.push_back(std::move(s));
      }
      if (out.size() >= limit || names.empty() || (names.size() < want && !any_more)) break;
      after = names.back();
    }
  }
  return out;
}

absl::StatusOr<std::vector<VersionInfo>> RadosStore::ListVersions(absl::string_view name,
                                                                  uint64_t after, size_t limit) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  librados::IoCtx io = core_->Ns(NamespaceOf(name));
  CKPT_ASSIGN_OR_RETURN(Head head, ReadHead(io, name, 0));
  if (head.count == 0) return internal::CheckpointNotFound(name);
  std::vector<VersionInfo> out;
  std::string start = VersionOmapKey(after);
  while (out.size() < limit) {
    std::map<std::string, librados::bufferlist> page;
    bool more = false;
    const uint64_t want = std::min<uint64_t>(limit - out.size(), 1000);
    const int rc = io.omap_get_vals2(HeadOid(name), start, "v.", want, &page, &more);
    if (rc == -ENOENT) break;
    CKPT_RETURN_IF_ERROR(RadosStatus(rc, absl::StrCat("listing versions of ", Quote(name))));
    for (auto& [key, value] : page) {
      uint64_t v = 0;
      absl::SimpleAtoi(key.substr(2), &v);
      auto stored = internal::DecodeStoredVersion(value.to_str());
      if (!stored.ok()) return Annotate(stored.status(), VersionContext(name, v));
      stored->info.name = std::string(name);
      stored->info.version = v;
      stored->info.tags = TagsOf(head, v);
      out.push_back(std::move(stored->info));
    }
    if (!more || page.empty()) break;
    start = page.rbegin()->first;
  }
  return out;
}

absl::StatusOr<uint64_t> RadosStore::DeleteVersion(absl::string_view name, uint64_t version,
                                                   bool force) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  librados::IoCtx io = core_->Ns(NamespaceOf(name));
  StoredVersion stored;
  for (int attempt = 0;; ++attempt) {
    CKPT_ASSIGN_OR_RETURN(Head head, ReadHead(io, name, version));
    CKPT_ASSIGN_OR_RETURN(stored, RecordOf(head, name, version));
    std::vector<std::string> own;
    for (const auto& [tag, v] : head.tags) {
      if (v == version) own.push_back(tag);
    }
    if (!own.empty() && !force) return internal::TaggedVersion(name, version, own);
    std::set<std::string> keys = {VersionOmapKey(version)};
    for (const std::string& tag : own) keys.insert("t." + tag);
    librados::ObjectWriteOperation op;
    Guard(op, head);
    op.omap_rm_keys(keys);
    op.setxattr(internal::kCount, Decimal(head.count - 1));
    if (version == head.latest) {
      CKPT_ASSIGN_OR_RETURN(uint64_t below, HighestBelow(io, name, version));
      int64_t below_ms = 0;
      if (below != 0) {
        CKPT_ASSIGN_OR_RETURN(Head b, ReadHead(io, name, below));
        if (b.record.has_value()) {
          auto s = internal::DecodeStoredVersion(*b.record);
          if (s.ok()) below_ms = s->info.create_time_ms;
        }
      }
      op.setxattr(internal::kLatest, Decimal(below));
      op.setxattr(internal::kLatestMs, Decimal(static_cast<uint64_t>(below_ms)));
    }
    const int rc = io.operate(HeadOid(name), &op);
    if (rc >= 0) break;
    if (!Conflict(rc) || attempt == kCasAttempts) {
      return RadosStatus(rc, absl::StrCat("deleting ", VersionContext(name, version)));
    }
    Backoff(attempt);
  }
  // The chunks no other version of the name uses (those of other names
  // are not read: gc keeps what they reference).
  uint64_t freed = 0, freed_bytes = 0;
  auto tree = internal::ReadTreeParts(io, stored);
  if (tree.ok()) {
    CKPT_ASSIGN_OR_RETURN(absl::flat_hash_set<Digest> kept, ChunksOfNamespace(io));
    absl::flat_hash_set<Digest> counted;
    for (const Node& node : *tree) {
      for (size_t c = 0; c < node.data.chunks.size(); ++c) {
        const Digest& d = node.data.chunks[c];
        if (kept.contains(d) || !counted.insert(d).second) continue;
        ++freed;
        freed_bytes += node.data.ChunkLength(c);
      }
    }
  }
  AddNamespaceBytes(io, -static_cast<int64_t>(freed_bytes));
  // The tree goes now; its chunks at the next collection.
  for (uint32_t p = 0; p < stored.tree_parts; ++p) {
    io.remove(internal::TreeOid(stored.tree_id, p));
  }
  return freed;
}

absl::Status RadosStore::SetTag(absl::string_view name, absl::string_view tag, uint64_t version) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  CKPT_RETURN_IF_ERROR(ValidateUserTag(tag));
  librados::IoCtx io = core_->Ns(NamespaceOf(name));
  for (int attempt = 0;; ++attempt) {
    CKPT_ASSIGN_OR_RETURN(Head head, ReadHead(io, name, version));
    CKPT_RETURN_IF_ERROR(RecordOf(head, name, version).status());
    if (!head.tags.count(std::string(tag)) && head.tags.size() >= kMaxTagsPerName) {
      return internal::TooManyTags(name);
    }
    librados::ObjectWriteOperation op;
    Guard(op, head);
    op.omap_set({{absl::StrCat("t.", tag), Decimal(version)}});
    const int rc = io.operate(HeadOid(name), &op);
    if (rc >= 0) return absl::OkStatus();
    if (!Conflict(rc) || attempt == kCasAttempts) {
      return RadosStatus(rc, absl::StrCat("tagging ", VersionContext(name, version)));
    }
    Backoff(attempt);
  }
}

absl::Status RadosStore::DeleteTag(absl::string_view name, absl::string_view tag) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  CKPT_RETURN_IF_ERROR(ValidateUserTag(tag));
  librados::IoCtx io = core_->Ns(NamespaceOf(name));
  for (int attempt = 0;; ++attempt) {
    CKPT_ASSIGN_OR_RETURN(Head head, ReadHead(io, name, 0));
    if (!head.tags.count(std::string(tag))) return internal::TagNotFound(name, tag);
    librados::ObjectWriteOperation op;
    Guard(op, head);
    op.omap_rm_keys({absl::StrCat("t.", tag)});
    const int rc = io.operate(HeadOid(name), &op);
    if (rc >= 0) return absl::OkStatus();
    if (!Conflict(rc) || attempt == kCasAttempts) {
      return RadosStatus(rc, absl::StrCat("removing tag ", Quote(tag), " of ", Quote(name)));
    }
    Backoff(attempt);
  }
}

absl::Status RadosStore::SetRetention(absl::string_view name, const RetentionPolicy& policy) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  CKPT_RETURN_IF_ERROR(ValidateRetentionPolicy(policy));
  librados::IoCtx io = core_->Ns(NamespaceOf(name));
  const std::string what = absl::StrCat("setting the retention policy of ", Quote(name));
  librados::ObjectWriteOperation op;
  if (!policy.enabled()) {
    op.assert_exists();
    op.rmxattr(internal::kRetention);
    const int rc = io.operate(HeadOid(name), &op);
    return rc == -ENOENT || rc == -ENODATA ? absl::OkStatus() : RadosStatus(rc, what);
  }
  op.create(false);
  op.setxattr(internal::kRetention, Bytes(EncodeRetentionPolicy(policy)));
  return RadosStatus(io.operate(HeadOid(name), &op), what);
}

absl::StatusOr<RetentionPolicy> RadosStore::GetRetention(absl::string_view name) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  librados::IoCtx io = core_->Ns(NamespaceOf(name));
  CKPT_ASSIGN_OR_RETURN(Head head, ReadHead(io, name, 0));
  if (!head.retention.has_value()) return RetentionPolicy{};
  auto policy = DecodeRetentionPolicy(*head.retention);
  if (!policy.ok()) {
    return Annotate(policy.status(), absl::StrCat("retention policy of ", Quote(name)));
  }
  return policy;
}

absl::StatusOr<std::vector<uint64_t>> RadosStore::Prune(absl::string_view name, bool dry_run) {
  return internal::PruneVersions(*this, name, dry_run);
}

absl::StatusOr<BackupInfo> RadosStore::Backup(const std::string&) {
  return absl::FailedPreconditionError(
      "backups of a RADOS store are Ceph's: rados export, or snapshots of the pool");
}

uint64_t RadosStore::NamespaceBytes(absl::string_view ns) {
  librados::IoCtx io = core_->Ns(ns);
  librados::bufferlist value;
  if (io.getxattr("q", internal::kBytes, value) < 0) return 0;
  uint64_t used = 0;
  return absl::SimpleAtoi(value.to_str(), &used) ? used : 0;
}

}  // namespace ckpt::storage
