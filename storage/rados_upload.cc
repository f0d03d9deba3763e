// The RADOS store's shared helpers (object names, statuses, heads, trees)
// and its uploads.

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "storage/codec.h"
#include "storage/rados_internal.h"
#include "storage/store_rules.h"

namespace ckpt::storage::internal {
namespace {

int ShardOf(absl::string_view s) { return Digest::Of(s).bytes[0] % kShards; }

std::string RandomId() {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrFormat("%016x%016x", rng(), rng());
}

}  // namespace

absl::Status RadosStatus(int rc, absl::string_view what) {
  if (rc >= 0) return absl::OkStatus();
  const int e = -rc;
  const std::string message = absl::StrCat(what, ": ", std::strerror(e));
  switch (e) {
    case ENOENT:
      return absl::NotFoundError(message);
    case ETIMEDOUT:
    case ENOTCONN:
    case ESHUTDOWN:
    case ECONNREFUSED:
    case EHOSTUNREACH:
      return absl::UnavailableError(
          absl::StrCat(what, ": the RADOS cluster did not answer (", std::strerror(e), ")"));
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    case ECANCELED:
      return absl::AbortedError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    default:
      return absl::InternalError(message);
  }
}

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

std::string ChunkOid(const Digest& digest) { return absl::StrCat("c.", digest.Hex()); }
std::string HeadOid(absl::string_view name) { return absl::StrCat("h.", name); }
std::string TreeOid(absl::string_view tree_id, size_t part) {
  return absl::StrCat("m.", tree_id, ".", part);
}
std::string NameShardOid(int shard) { return absl::StrCat("n.", shard); }
std::string NameShardOid(absl::string_view name) { return NameShardOid(ShardOf(name)); }
std::string NamespaceShardOid(int shard) { return absl::StrCat("ns.", shard); }
std::string NamespaceShardOid(absl::string_view ns) { return NamespaceShardOid(ShardOf(ns)); }
std::string LeaseOid(absl::string_view upload_id, size_t part) {
  return absl::StrCat("u.", upload_id, ".", part);
}
std::string VersionOmapKey(uint64_t version) { return absl::StrFormat("v.%020u", version); }

librados::bufferlist Bytes(absl::string_view s) {
  librados::bufferlist bl;
  bl.append(s.data(), s.size());
  return bl;
}

librados::bufferlist Decimal(uint64_t v) { return Bytes(absl::StrCat(v)); }

uint64_t DecimalOf(const std::map<std::string, librados::bufferlist>& attrs, const char* name) {
  auto it = attrs.find(name);
  if (it == attrs.end()) return 0;
  uint64_t v = 0;
  return absl::SimpleAtoi(it->second.to_str(), &v) ? v : 0;
}

RadosCore::~RadosCore() {
  data.close();
  pool.close();
  cluster.shutdown();
}

librados::IoCtx RadosCore::InNamespace(librados::IoCtx& base, absl::string_view ns) {
  librados::IoCtx io;
  std::lock_guard<std::mutex> lock(mu);
  io.dup(base);
  io.set_namespace(absl::StrCat(options.rados.namespace_prefix, ns));
  return io;
}

librados::IoCtx RadosCore::Ns(absl::string_view ns) { return InNamespace(pool, ns); }

librados::IoCtx RadosCore::Chunks(absl::string_view ns) { return InNamespace(data, ns); }

librados::IoCtx RadosCore::Global() { return Ns(kGlobalNamespace); }

absl::StatusOr<std::vector<std::string>> RadosCore::Namespaces() {
  librados::IoCtx io = Global();
  std::vector<std::string> out;
  for (int shard = 0; shard < kShards; ++shard) {
    std::string after;
    for (;;) {
      std::map<std::string, librados::bufferlist> page;
      bool more = false;
      int rc = io.omap_get_vals2(NamespaceShardOid(shard), after, 1000, &page, &more);
      if (rc == -ENOENT) break;
      CKPT_RETURN_IF_ERROR(RadosStatus(rc, "listing namespaces"));
      for (auto& [ns, unused] : page) out.push_back(ns);
      if (!more || page.empty()) break;
      after = page.rbegin()->first;
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status RadosCore::RegisterNamespace(absl::string_view ns) {
  {
    std::lock_guard<std::mutex> lock(mu);
    if (registered.contains(ns)) return absl::OkStatus();
  }
  librados::IoCtx io = Global();
  librados::ObjectWriteOperation op;
  op.omap_set({{std::string(ns), librados::bufferlist()}});
  CKPT_RETURN_IF_ERROR(
      RadosStatus(io.operate(NamespaceShardOid(ns), &op), "registering the namespace"));
  std::lock_guard<std::mutex> lock(mu);
  registered.insert(std::string(ns));
  return absl::OkStatus();
}

absl::Status RadosCore::Register(absl::string_view name) {
  CKPT_RETURN_IF_ERROR(RegisterNamespace(NamespaceOf(name)));
  librados::IoCtx io = Ns(NamespaceOf(name));
  librados::ObjectWriteOperation op;
  op.omap_set({{std::string(name), librados::bufferlist()}});
  return RadosStatus(io.operate(NameShardOid(name), &op),
                     absl::StrCat("registering ", Quote(name)));
}

std::vector<int> RunWindowed(size_t n,
                             const std::function<int(size_t, librados::AioCompletion*)>& start) {
  constexpr size_t kWindow = 64;
  std::vector<int> rcs(n, 0);
  std::vector<std::pair<size_t, librados::AioCompletion*>> flight;
  auto finish = [&](size_t keep) {
    while (flight.size() > keep) {
      auto [i, c] = flight.front();
      flight.erase(flight.begin());
      c->wait_for_complete();
      rcs[i] = c->get_return_value();
      c->release();
    }
  };
  for (size_t i = 0; i < n; ++i) {
    librados::AioCompletion* c = librados::Rados::aio_create_completion();
    const int rc = start(i, c);
    if (rc < 0) {
      rcs[i] = rc;
      c->release();
      continue;
    }
    flight.emplace_back(i, c);
    finish(kWindow - 1);
  }
  finish(0);
  return rcs;
}

std::vector<int> OperateAll(librados::IoCtx& io, const std::vector<std::string>& oids,
                            std::vector<librados::ObjectWriteOperation>& ops) {
  return RunWindowed(oids.size(), [&](size_t i, librados::AioCompletion* c) {
    return io.aio_operate(oids[i], c, &ops[i]);
  });
}

std::vector<int> StatAll(librados::IoCtx& io, const std::vector<std::string>& oids,
                         std::vector<uint64_t>* sizes) {
  sizes->assign(oids.size(), 0);
  std::vector<time_t> mtimes(oids.size(), 0);
  return RunWindowed(oids.size(), [&](size_t i, librados::AioCompletion* c) {
    return io.aio_stat(oids[i], c, &(*sizes)[i], &mtimes[i]);
  });
}

absl::StatusOr<Head> ReadHead(librados::IoCtx& io, absl::string_view name, uint64_t version) {
  librados::ObjectReadOperation op;
  std::map<std::string, librados::bufferlist> attrs, tags, record;
  int attrs_rc = 0, tags_rc = 0, record_rc = 0;
  bool more = false;
  op.getxattrs(&attrs, &attrs_rc);
  op.omap_get_vals2("", "t.", kMaxTagsPerName + 1, &tags, &more, &tags_rc);
  if (version != 0) op.omap_get_vals_by_keys({VersionOmapKey(version)}, &record, &record_rc);
  librados::bufferlist unused;
  const int rc = io.operate(HeadOid(name), &op, &unused);
  Head head;
  if (rc == -ENOENT) return head;
  CKPT_RETURN_IF_ERROR(RadosStatus(rc, absl::StrCat("reading the head of ", Quote(name))));
  head.exists = true;
  head.gen = DecimalOf(attrs, kGen);
  head.last = DecimalOf(attrs, kLast);
  head.count = DecimalOf(attrs, kCount);
  head.latest = DecimalOf(attrs, kLatest);
  head.latest_ms = static_cast<int64_t>(DecimalOf(attrs, kLatestMs));
  if (auto it = attrs.find(kRetention); it != attrs.end()) head.retention = it->second.to_str();
  for (auto& [key, value] : tags) {
    uint64_t v = 0;
    if (absl::SimpleAtoi(value.to_str(), &v)) head.tags[key.substr(2)] = v;
  }
  if (!record.empty()) head.record = record.begin()->second.to_str();
  return head;
}

std::string EncodeStoredVersion(const StoredVersion& v) {
  return absl::StrCat(v.tree_id, absl::StrFormat("%08x%016x", v.tree_parts, v.tree_bytes),
                      EncodeVersionRecord(v.info));
}

absl::StatusOr<StoredVersion> DecodeStoredVersion(absl::string_view bytes) {
  StoredVersion v;
  if (bytes.size() < 56) return absl::DataLossError("version record too short");
  v.tree_id = std::string(bytes.substr(0, 32));
  uint64_t parts = 0, size = 0;
  if (!absl::SimpleHexAtoi(bytes.substr(32, 8), &parts) ||
      !absl::SimpleHexAtoi(bytes.substr(40, 16), &size)) {
    return absl::DataLossError("malformed version record");
  }
  v.tree_parts = static_cast<uint32_t>(parts);
  v.tree_bytes = size;
  CKPT_ASSIGN_OR_RETURN(v.info, DecodeVersionRecord(bytes.substr(56)));
  return v;
}

absl::StatusOr<Tree> ReadTreeParts(librados::IoCtx& io, const StoredVersion& v) {
  std::vector<librados::bufferlist> parts(v.tree_parts);
  std::vector<librados::AioCompletion*> completions(v.tree_parts);
  for (uint32_t i = 0; i < v.tree_parts; ++i) {
    completions[i] = librados::Rados::aio_create_completion();
    io.aio_read(TreeOid(v.tree_id, i), completions[i], &parts[i], kTreePartBytes, 0);
  }
  absl::Status status;
  std::string bytes;
  bytes.reserve(v.tree_bytes);
  for (uint32_t i = 0; i < v.tree_parts; ++i) {
    completions[i]->wait_for_complete();
    const int rc = completions[i]->get_return_value();
    completions[i]->release();
    if (status.ok()) status = RadosStatus(rc, absl::StrCat("reading tree part ", i));
    if (status.ok()) bytes += parts[i].to_str();
  }
  CKPT_RETURN_IF_ERROR(status);
  if (bytes.size() != v.tree_bytes) {
    return absl::DataLossError(
        absl::StrCat("tree of ", bytes.size(), " bytes, the record says ", v.tree_bytes));
  }
  return DecodeTree(bytes);
}

int PendingRead::Wait() {
  if (completion == nullptr) return -EINVAL;
  completion->wait_for_complete();
  const int rc = completion->get_return_value();
  completion->release();
  completion = nullptr;
  return rc;
}

PendingRead::~PendingRead() {
  if (completion != nullptr) Wait();
}

// ---------------------------------------------------------------------------
// Uploads

RadosUpload::RadosUpload(std::shared_ptr<RadosCore> core, std::string ns)
    : core_(std::move(core)),
      ns_(std::move(ns)),
      id_(RandomId()),
      io_(core_->Ns(ns_)),
      chunks_(core_->Chunks(ns_)) {}

RadosUpload::RadosUpload(std::shared_ptr<RadosCore> core, std::string ns, std::string id,
                         absl::flat_hash_map<Digest, uint64_t> written,
                         absl::flat_hash_map<Digest, uint64_t> pinned)
    : core_(std::move(core)),
      ns_(std::move(ns)),
      id_(std::move(id)),
      io_(core_->Ns(ns_)),
      chunks_(core_->Chunks(ns_)),
      written_(std::move(written)),
      pinned_(std::move(pinned)),
      sealed_(true) {
  for (const auto& [digest, length] : written_) bytes_written_ += length;
}

absl::Status RadosUpload::Renew() {
  std::lock_guard<std::mutex> lock(lease_mu_);
  if (!broken_.ok() || committed_) return broken_;
  if (lease_written_ && absl::Now() - lease_renewed_ < core_->options.rados.upload_lease / 3) {
    return absl::OkStatus();
  }
  return FlushPins();
}

RadosUpload::~RadosUpload() {
  Drain(0).IgnoreError();
  if (committed_) return;
  if (sealed_ && lease_written_) {
    // A sealed upload leaves a dead upload for the next collection: its
    // lease ends now.
    librados::ObjectWriteOperation op;
    op.setxattr(kLeaseEnd, Decimal(0));
    if (io_.operate(LeaseOid(id_, 0), &op) >= 0) return;
  }
  // An unsealed one takes back what it wrote (unless a save found it since).
  RemoveWritten([](const Digest&) { return true; });
  DropLease();
}

void RadosUpload::RemoveWritten(const std::function<bool(const Digest&)>& which) {
  std::vector<std::string> oids;
  std::vector<librados::ObjectWriteOperation> ops;
  for (const auto& [digest, touched] : write_touch_) {
    if (which(digest)) oids.push_back(ChunkOid(digest));
  }
  ops.resize(oids.size());
  size_t k = 0;
  for (const auto& [digest, touched] : write_touch_) {
    if (!which(digest)) continue;
    ops[k].cmpxattr(kTouched, LIBRADOS_CMPXATTR_OP_EQ, touched);
    ops[k].remove();
    ++k;
  }
  OperateAll(chunks_, oids, ops);
}

void RadosUpload::DropLease() {
  if (!lease_written_) return;
  const size_t parts = pins_recorded_ / kPinsPerObject + 1;
  for (size_t i = 0; i < parts; ++i) io_.remove(LeaseOid(id_, i));
  lease_written_ = false;
}

void RadosUpload::MarkCommitted() {
  std::lock_guard<std::mutex> lock(lease_mu_);
  committed_ = true;
  DropLease();
}

absl::Status RadosUpload::FlushPins() {
  const absl::Duration lease = core_->options.rados.upload_lease;
  const int64_t end = absl::ToUnixMillis(absl::Now() + lease);
  size_t next = 0;
  do {
    const size_t part = pins_recorded_ / kPinsPerObject;
    const size_t room = kPinsPerObject - pins_recorded_ % kPinsPerObject;
    const size_t n = std::min(room, unflushed_.size() - next);
    librados::ObjectWriteOperation op;
    if (n > 0) {
      librados::bufferlist bl;
      for (size_t i = next; i < next + n; ++i) {
        bl.append(reinterpret_cast<const char*>(unflushed_[i].bytes.data()),
                  unflushed_[i].bytes.size());
      }
      op.append(bl);
    }
    if (part == 0) op.setxattr(kLeaseEnd, Decimal(end));
    if (n == 0 && part != 0) break;
    CKPT_RETURN_IF_ERROR(
        RadosStatus(io_.operate(LeaseOid(id_, part), &op), "recording an upload's chunks"));
    lease_written_ = true;
    pins_recorded_ += n;
    next += n;
  } while (next < unflushed_.size());
  if (pins_recorded_ / kPinsPerObject > 0) {
    // The lease lives on part 0.
    librados::ObjectWriteOperation op;
    op.setxattr(kLeaseEnd, Decimal(end));
    CKPT_RETURN_IF_ERROR(RadosStatus(io_.operate(LeaseOid(id_, 0), &op), "renewing a lease"));
  }
  unflushed_.clear();
  lease_renewed_ = absl::Now();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<bool>> RadosUpload::FindMissing(absl::Span<const Digest> digests) {
  if (!broken_.ok()) return broken_;
  std::vector<bool> missing(digests.size(), false);
  std::vector<size_t> ask;
  for (size_t i = 0; i < digests.size(); ++i) {
    if (!Has(digests[i])) ask.push_back(i);
  }
  if (ask.empty()) return missing;
  // Which exist (and their lengths).
  std::vector<std::string> asked;
  for (size_t j : ask) asked.push_back(ChunkOid(digests[j]));
  std::vector<uint64_t> sizes;
  const std::vector<int> stat_rcs = StatAll(chunks_, asked, &sizes);
  std::vector<size_t> present;
  absl::Status status;
  for (size_t j = 0; j < ask.size(); ++j) {
    const int rc = stat_rcs[j];
    if (rc == -ENOENT) {
      missing[ask[j]] = true;
    } else if (rc < 0) {
      if (status.ok()) status = RadosStatus(rc, "looking up chunks");
    } else {
      present.push_back(j);
    }
  }
  CKPT_RETURN_IF_ERROR(status);
  // Pin before touching: a collection then sees the pin or the touch.
  for (size_t j : present) unflushed_.push_back(digests[ask[j]]);
  CKPT_RETURN_IF_ERROR(FlushPins());
  std::vector<std::string> oids;
  std::vector<librados::ObjectWriteOperation> ops(present.size());
  const librados::bufferlist now = Decimal(NowMs());
  for (size_t k = 0; k < present.size(); ++k) {
    oids.push_back(ChunkOid(digests[ask[present[k]]]));
    ops[k].assert_exists();
    ops[k].setxattr(kTouched, now);
  }
  const std::vector<int> rcs = OperateAll(chunks_, oids, ops);
  for (size_t k = 0; k < present.size(); ++k) {
    const size_t i = ask[present[k]];
    if (rcs[k] == -ENOENT) {
      missing[i] = true;  // collected between the lookup and the pin
    } else if (rcs[k] < 0) {
      return RadosStatus(rcs[k], "pinning chunks");
    } else {
      pinned_[digests[i]] = sizes[present[k]];
    }
  }
  return missing;
}

absl::Status RadosUpload::Drain(size_t keep) {
  while (in_flight_.size() > keep) {
    InFlight f = in_flight_.front();
    in_flight_.erase(in_flight_.begin());
    f.completion->wait_for_complete();
    const int rc = f.completion->get_return_value();
    f.completion->release();
    if (rc < 0 && broken_.ok()) {
      broken_ = RadosStatus(rc, absl::StrCat("writing chunk ", f.digest.Hex()));
    }
  }
  return broken_;
}

absl::Status RadosUpload::PutChunk(const Digest& digest, absl::Span<const uint8_t> data) {
  if (!broken_.ok()) return broken_;
  if (sealed_) return absl::FailedPreconditionError("upload is sealed; no more chunks accepted");
  CKPT_RETURN_IF_ERROR(CheckChunk(digest, data, core_->options.max_chunk_bytes));
  if (written_.contains(digest)) return absl::OkStatus();
  unflushed_.push_back(digest);
  if (unflushed_.size() == 1) oldest_unflushed_ = absl::Now();
  // Written chunks are safe from collection for gc_grace after their write
  // (ckpt.t): record them well before that.
  const absl::Duration grace = core_->options.rados.gc_grace;
  if (absl::Now() - oldest_unflushed_ > grace / 4 || unflushed_.size() >= 4096 ||
      absl::Now() - lease_renewed_ > core_->options.rados.upload_lease / 3) {
    CKPT_RETURN_IF_ERROR(FlushPins());
  }
  librados::ObjectWriteOperation op;
  op.write_full(Bytes(absl::string_view(reinterpret_cast<const char*>(data.data()), data.size())));
  const uint64_t touched = static_cast<uint64_t>(NowMs());
  op.setxattr(kTouched, Decimal(touched));
  write_touch_[digest] = touched;
  librados::AioCompletion* c = librados::Rados::aio_create_completion();
  const int rc = chunks_.aio_operate(ChunkOid(digest), c, &op);
  if (rc < 0) {
    c->release();
    broken_ = RadosStatus(rc, absl::StrCat("writing chunk ", digest.Hex()));
    return broken_;
  }
  in_flight_.push_back({c, digest});
  written_[digest] = data.size();
  bytes_written_ += data.size();
  return Drain(32);
}

bool RadosUpload::Has(const Digest& digest) const {
  return written_.contains(digest) || pinned_.contains(digest);
}

absl::Status RadosUpload::Seal() {
  if (!broken_.ok()) return broken_;
  if (sealed_) return absl::OkStatus();
  absl::Status s = Drain(0);
  if (s.ok()) s = FlushPins();
  if (!s.ok()) {
    broken_ = s;
    return s;
  }
  sealed_ = true;
  return absl::OkStatus();
}

}  // namespace ckpt::storage::internal
