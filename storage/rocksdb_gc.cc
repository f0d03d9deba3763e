// Garbage collection of the RocksDB store (see rocksdb_store.h): phase 1
// drops unreferenced refs entries and dead uploads' pending records; phase 2
// reclaims the space of chunk files without touching any other file.

#include <algorithm>
#include <limits>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "rocksdb/convenience.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"
#include "storage/codec.h"
#include "storage/rocksdb_status.h"
#include "storage/rocksdb_store.h"
#include "storage/store_core.h"

namespace ckpt::storage {

using internal::ScanIterator;
using internal::StoreCore;
using internal::View;

namespace {

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

}  // namespace

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
          ScanIterator chunks(
              core_->db, core_->chunks_cf, ro, ChunkKey(r.lo),
              r.hi == std::numeric_limits<uint64_t>::max() ? std::string() : ChunkKey(r.hi + 1));
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

}  // namespace ckpt::storage
