// The RADOS store's garbage collection and statistics: a mark phase per
// namespace (what committed versions reference, what live uploads pinned)
// and, for collection, a sweep of the rest with writes guarded by the
// chunks' last touch. Protocol: rados_store.h.

#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "storage/rados_internal.h"
#include "storage/rados_store.h"
#include "storage/store_rules.h"

namespace ckpt::storage {

using internal::RadosStatus;

namespace {

// What one namespace holds and uses.
struct Marked {
  std::vector<std::string> chunk_oids;  // every c.* object
  std::vector<std::string> tree_oids;   // every m.* object
  // Every s.* and r.* object (multi-part saves staged, their parts).
  std::vector<std::string> staged_oids;
  // Upload id -> its lease parts.
  std::map<std::string, std::vector<std::string>> leases;
  // Referenced chunks (digest -> length) and live tree ids.
  absl::flat_hash_map<Digest, uint64_t> referenced;
  absl::flat_hash_set<std::string> trees;
  absl::flat_hash_set<Digest> pinned;
  std::vector<std::string> expired;  // upload ids whose lease ended
  uint64_t live_uploads = 0;
  uint64_t checkpoints = 0;
  uint64_t versions = 0;
  uint64_t logical_bytes = 0;
};

// The chunk objects of a namespace (`chunks`: its IoCtx in the data pool).
absl::StatusOr<std::vector<std::string>> ChunkObjects(librados::IoCtx& chunks) {
  std::vector<std::string> oids;
  try {
    for (auto it = chunks.nobjects_begin(); it != chunks.nobjects_end(); ++it) {
      if (absl::StartsWith(it->get_oid(), "c.")) oids.push_back(it->get_oid());
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("listing chunks: ", e.what()));
  }
  return oids;
}

// `io`: the namespace's IoCtx; `chunks`: the same namespace in the data
// pool, another pool if `split`.
absl::StatusOr<Marked> Mark(librados::IoCtx& io, librados::IoCtx& chunks, bool split,
                            int64_t now_ms) {
  Marked m;
  if (split) {
    CKPT_ASSIGN_OR_RETURN(m.chunk_oids, ChunkObjects(chunks));
  }
  try {
    for (auto it = io.nobjects_begin(); it != io.nobjects_end(); ++it) {
      const std::string& oid = it->get_oid();
      if (absl::StartsWith(oid, "c.")) {
        m.chunk_oids.push_back(oid);
      } else if (absl::StartsWith(oid, "m.")) {
        m.tree_oids.push_back(oid);
      } else if (absl::StartsWith(oid, "s.") || absl::StartsWith(oid, "r.")) {
        m.staged_oids.push_back(oid);
      } else if (absl::StartsWith(oid, "u.")) {
        const size_t dot = oid.rfind('.');
        m.leases[oid.substr(2, dot - 2)].push_back(oid);
      }
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("listing objects: ", e.what()));
  }
  // Leases: live ones pin their digests.
  for (const auto& [id, parts] : m.leases) {
    librados::bufferlist end;
    const int rc = io.getxattr(internal::LeaseOid(id, 0), internal::kLeaseEnd, end);
    uint64_t end_ms = 0;
    if (rc >= 0) absl::SimpleAtoi(end.to_str(), &end_ms);
    if (rc < 0 && rc != -ENOENT && rc != -ENODATA) {
      return RadosStatus(rc, "reading an upload's lease");
    }
    if (static_cast<int64_t>(end_ms) <= now_ms) {
      m.expired.push_back(id);
      continue;
    }
    ++m.live_uploads;
    for (const std::string& part : parts) {
      librados::bufferlist pins;
      const int read = io.read(part, pins, 64 << 20, 0);
      if (read == -ENOENT) continue;  // dropped meanwhile
      CKPT_RETURN_IF_ERROR(RadosStatus(read, "reading an upload's pins"));
      const std::string bytes = pins.to_str();
      for (size_t off = 0; off + 16 <= bytes.size(); off += 16) {
        auto d = Digest::FromBytes(absl::string_view(bytes).substr(off, 16));
        if (d.ok()) m.pinned.insert(*d);
      }
    }
  }
  // Committed versions: names -> heads -> records -> trees.
  for (int shard = 0; shard < internal::kShards; ++shard) {
    std::string after;
    for (;;) {
      std::map<std::string, librados::bufferlist> names;
      bool more = false;
      int rc = io.omap_get_vals2(internal::NameShardOid(shard), after, 1000, &names, &more);
      if (rc == -ENOENT) break;
      CKPT_RETURN_IF_ERROR(RadosStatus(rc, "listing checkpoints"));
      for (const auto& [name, unused] : names) {
        std::string start;
        bool counted = false;
        for (;;) {
          std::map<std::string, librados::bufferlist> records;
          bool more_records = false;
          rc = io.omap_get_vals2(internal::HeadOid(name), start, "v.", 1000, &records,
                                 &more_records);
          if (rc == -ENOENT) break;
          CKPT_RETURN_IF_ERROR(RadosStatus(rc, absl::StrCat("reading versions of ", name)));
          for (const auto& [key, value] : records) {
            auto stored = internal::DecodeStoredVersion(value.to_str());
            if (!stored.ok()) return Annotate(stored.status(), absl::StrCat(name, " ", key));
            if (!counted) ++m.checkpoints;
            counted = true;
            ++m.versions;
            m.logical_bytes += stored->info.data_bytes;
            m.trees.insert(stored->tree_id);
            auto tree = internal::ReadTreeParts(io, *stored);
            if (absl::IsNotFound(tree.status())) continue;  // deleted meanwhile
            if (!tree.ok()) return Annotate(tree.status(), absl::StrCat(name, " ", key));
            for (const Node& node : *tree) {
              for (size_t c = 0; c < node.data.chunks.size(); ++c) {
                m.referenced[node.data.chunks[c]] = node.data.ChunkLength(c);
              }
            }
          }
          if (!more_records || records.empty()) break;
          start = records.rbegin()->first;
        }
      }
      if (!more || names.empty()) break;
      after = names.rbegin()->first;
    }
  }
  return m;
}

absl::StatusOr<Digest> DigestOfOid(absl::string_view oid) {
  const absl::string_view hex = oid.substr(std::min<size_t>(2, oid.size()));
  if (oid.size() != 34 ||
      !std::all_of(hex.begin(), hex.end(), [](char c) { return absl::ascii_isxdigit(c); })) {
    return absl::DataLossError(absl::StrCat("unexpected object ", oid));
  }
  return Digest::FromBytes(absl::HexStringToBytes(hex));
}

}  // namespace

absl::StatusOr<GcResult> RadosStore::CollectGarbage() {
  static std::mutex local;  // one collection per process at a time
  std::lock_guard<std::mutex> one(local);
  librados::IoCtx global = core_->Global();
  // One at a time cluster-wide: the lock expires by itself if its holder
  // dies.
  const std::string cookie =
      absl::StrCat(internal::NowMs(), "-", reinterpret_cast<uintptr_t>(this));
  timeval duration{3600, 0};
  for (int attempt = 0;; ++attempt) {
    const int rc =
        global.lock_exclusive("gc", "ckpt.gc", cookie, "garbage collection", &duration, 0);
    if (rc >= 0) break;
    if ((rc != -EBUSY && rc != -EEXIST) || attempt == 600) {
      return Annotate(RadosStatus(rc, "taking the garbage collection lock"),
                      "another server may be collecting");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  absl::Cleanup unlock = [&] { global.unlock("gc", "ckpt.gc", cookie); };

  const int64_t start = internal::NowMs();
  const uint64_t threshold =
      static_cast<uint64_t>(start - absl::ToInt64Milliseconds(core_->options.rados.gc_grace));
  GcResult result;
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> namespaces, core_->Namespaces());
  for (const std::string& ns : namespaces) {
    librados::IoCtx io = core_->Ns(ns);
    librados::IoCtx chunks = core_->Chunks(ns);
    CKPT_ASSIGN_OR_RETURN(Marked m, Mark(io, chunks, core_->split, start));
    for (const std::string& id : m.expired) {
      for (const std::string& part : m.leases[id]) io.remove(part);
      ++result.orphan_uploads_removed;
    }
    // Chunks neither referenced nor pinned, untouched since before the
    // grace: removed by a write that checks the touch again.
    std::vector<std::string> chunk_oids;
    for (const std::string& oid : m.chunk_oids) {
      CKPT_ASSIGN_OR_RETURN(Digest d, DigestOfOid(oid));
      if (m.referenced.contains(d) || m.pinned.contains(d)) continue;
      chunk_oids.push_back(oid);
    }
    std::vector<uint64_t> sizes;
    internal::StatAll(chunks, chunk_oids, &sizes);  // for the bytes reported
    std::vector<librados::ObjectWriteOperation> chunk_ops(chunk_oids.size());
    for (auto& op : chunk_ops) {
      op.cmpxattr(internal::kTouched, LIBRADOS_CMPXATTR_OP_GT, threshold);
      op.remove();
    }
    const std::vector<int> chunk_rcs = internal::OperateAll(chunks, chunk_oids, chunk_ops);
    for (size_t i = 0; i < chunk_oids.size(); ++i) {
      if (chunk_rcs[i] == -ECANCELED || chunk_rcs[i] == -ENOENT) continue;  // touched, or gone
      CKPT_RETURN_IF_ERROR(RadosStatus(chunk_rcs[i], absl::StrCat("removing ", chunk_oids[i])));
      ++result.chunks_removed;
      result.bytes_removed += sizes[i];
    }
    // Trees no version uses, the same way.
    std::vector<std::string> oids;
    for (const std::string& oid : m.tree_oids) {
      const size_t dot = oid.rfind('.');
      if (m.trees.contains(oid.substr(2, dot - 2))) continue;
      oids.push_back(oid);
    }
    const size_t touched = oids.size();
    // Staged multi-part saves past their end (deadline plus a lease): gone
    // unless renewed meanwhile (a new save under the same save_id).
    oids.insert(oids.end(), m.staged_oids.begin(), m.staged_oids.end());
    std::vector<librados::ObjectWriteOperation> ops(oids.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      ops[i].cmpxattr(i < touched ? internal::kTouched : internal::kLeaseEnd,
                      LIBRADOS_CMPXATTR_OP_GT, threshold);
      ops[i].remove();
    }
    const std::vector<int> rcs = internal::OperateAll(io, oids, ops);
    for (size_t i = 0; i < oids.size(); ++i) {
      if (rcs[i] == -ECANCELED || rcs[i] == -ENOENT) continue;  // touched since, or gone
      CKPT_RETURN_IF_ERROR(RadosStatus(rcs[i], absl::StrCat("removing ", oids[i])));
    }
    // The namespace's bytes as of this collection: what its versions use.
    uint64_t used = 0;
    for (const auto& [d, length] : m.referenced) used += length;
    librados::ObjectWriteOperation q;
    q.create(false);
    q.setxattr(internal::kBytes, internal::Decimal(used));
    io.operate("q", &q);
  }
  return result;
}

absl::StatusOr<StoreStats> RadosStore::Stats() {
  StoreStats stats;
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> namespaces, core_->Namespaces());
  for (const std::string& ns : namespaces) {
    librados::IoCtx io = core_->Ns(ns);
    librados::IoCtx chunks = core_->Chunks(ns);
    CKPT_ASSIGN_OR_RETURN(Marked m, Mark(io, chunks, core_->split, internal::NowMs()));
    stats.checkpoints += m.checkpoints;
    stats.versions += m.versions;
    stats.logical_bytes += m.logical_bytes;
    stats.active_uploads += m.live_uploads;
    stats.chunks += m.referenced.size();
    for (const auto& [d, length] : m.referenced) stats.stored_bytes += length;
    std::vector<uint64_t> sizes;
    const std::vector<int> rcs = internal::StatAll(chunks, m.chunk_oids, &sizes);
    for (size_t i = 0; i < m.chunk_oids.size(); ++i) {
      if (rcs[i] < 0) continue;  // removed meanwhile
      const uint64_t size = sizes[i];
      stats.disk_bytes += size;
      auto d = DigestOfOid(m.chunk_oids[i]);
      if (d.ok() && !m.referenced.contains(*d) && !m.pinned.contains(*d)) {
        stats.garbage_bytes += size;
      }
    }
  }
  return stats;
}

absl::StatusOr<uint64_t> RadosStore::CountChunkObjects() {
  uint64_t n = 0;
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> namespaces, core_->Namespaces());
  for (const std::string& ns : namespaces) {
    librados::IoCtx chunks = core_->Chunks(ns);
    CKPT_ASSIGN_OR_RETURN(std::vector<std::string> oids, ChunkObjects(chunks));
    n += oids.size();
  }
  return n;
}

}  // namespace ckpt::storage
