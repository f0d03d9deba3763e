// Garbage collection of the RocksDB store (see rocksdb_store.h): phase 1
// drops unreferenced refs entries and dead uploads' pending records; phase 2
// reclaims the space of chunk files without touching any other file.

#include <algorithm>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/crash_point.h"
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
// garbage wait; their dead chunks are already unreachable. Returns the bytes
// of the files dropped whole.
absl::StatusOr<uint64_t> ReclaimChunkFiles(StoreCore& core, const ChunkUse& use) {
  if (use.damaged) return 0;
  std::vector<rocksdb::LiveFileMetaData> files;
  core.db->GetLiveFilesMetaData(&files);
  std::vector<ChunkIdRange> drop, rewrite;
  uint64_t dropped_bytes = 0;
  for (const rocksdb::LiveFileMetaData& f : files) {
    // L0 files may overlap one another; DeleteFilesInRanges skips them too.
    if (f.column_family_name != kChunksFamily || f.level == 0) continue;
    auto lo = ParseChunkKey(f.smallestkey);
    auto hi = ParseChunkKey(f.largestkey);
    if (!lo.ok() || !hi.ok() || *lo > *hi || use.TouchesLiveBlock(*lo, *hi)) continue;
    auto [live, live_bytes] = use.Referenced(*lo, *hi);
    if (live == 0) {
      drop.push_back({*lo, *hi});
      dropped_bytes += f.size;
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
  return dropped_bytes;
}

void AddTo(GcResult& total, const GcResult& more) {
  total.chunks_removed += more.chunks_removed;
  total.bytes_removed += more.bytes_removed;
  total.orphan_uploads_removed += more.orphan_uploads_removed;
}

// What a first phase removed, and whether it stopped for lack of room
// before the end.
struct PhaseOne {
  GcResult removed;
  bool cut_short = false;
};

// Largest batch of deletes the first phase writes at once. One batch of
// every dead entry could need more room than a full disk's reserve holds
// (1 M dead references take ~30 MB); bounded batches let it go as far as
// the room allows.
constexpr size_t kGcBatchBytes = size_t{1} << 20;

// Phase 1 of a collection, under the commit mutex: drops unreferenced,
// unpinned refs entries and the pending records of dead uploads, in synced
// batches of at most kGcBatchBytes; from then on their chunks are
// unreachable. Fills `use` for the second phase. A batch refused for lack
// of room ends the phase there (cut_short): the entries not dropped count as
// referenced, so their chunks stay. Dead references go in chunk id order, so
// that the batches written free whole chunk files in the second phase.
absl::StatusOr<PhaseOne> DropDeadEntries(StoreCore& core, ChunkUse& use) {
  std::lock_guard<std::mutex> commit_lock(core.commit_mu);
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;

  // Every block a live upload holds, and every block handed out later, is
  // off limits: a commit may still reference chunks there.
  {
    std::lock_guard<std::mutex> lock(core.mu);
    for (const auto& [id, blocks] : core.live_blocks) {
      use.live_blocks.insert(use.live_blocks.end(), blocks.begin(), blocks.end());
    }
    use.first_new_block = core.next_block;
  }
  std::sort(use.live_blocks.begin(), use.live_blocks.end());

  // One delete and what it removes; `referenced` is what stays referenced
  // when it is not written.
  struct Entry {
    rocksdb::ColumnFamilyHandle* cf;
    std::string key;
    GcResult removes;
    std::optional<RefValue> referenced;
  };
  std::vector<Entry> entries;
  {
    // Uploads begun after this copy have ids >= first_unseen: live too.
    absl::flat_hash_set<uint64_t> live;
    uint64_t first_unseen;
    {
      std::lock_guard<std::mutex> lock(core.mu);
      live = core.live_uploads;
      first_unseen = core.next_upload_id;
    }
    ScanIterator it(core.db, core.default_cf, ro, std::string(kPendingPrefix),
                    PrefixSuccessor(kPendingPrefix));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto id = ParsePendingKey(View(it->key()));
      if (id.ok() && (live.contains(*id) || *id >= first_unseen)) continue;
      Entry entry{core.default_cf, it->key().ToString(), {}, std::nullopt};
      entry.removes.orphan_uploads_removed = 1;
      auto record = DecodePendingRecord(View(it->value()));
      if (id.ok() && record.ok()) {  // Unreadable: nothing to count.
        // What is really on disk: an upload whose ingest failed (a full
        // disk) recorded chunks it never wrote.
        for (const ChunkIdRange& r : record->ranges) {
          ScanIterator chunks(
              core.db, core.chunks_cf, ro, ChunkKey(r.lo),
              r.hi == std::numeric_limits<uint64_t>::max() ? std::string() : ChunkKey(r.hi + 1));
          for (chunks->SeekToFirst(); chunks->Valid(); chunks->Next()) {
            ++entry.removes.chunks_removed;
            entry.removes.bytes_removed += chunks->value().size();
          }
          CKPT_RETURN_IF_ERROR(FromRocksDb(chunks->status(), "scanning a dead upload's chunks"));
        }
      }
      entries.push_back(std::move(entry));
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "scanning pending uploads"));
  }

  std::vector<Entry> dead;
  {
    std::unique_ptr<rocksdb::Iterator> it(core.db->NewIterator(ro, core.refs_cf));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto value = DecodeRefValue(View(it->value()));
      if (!value.ok()) {
        // A damaged entry might point anywhere: keep its whole block.
        use.damaged = true;
        continue;
      }
      if (value->refcount != 0) {
        use.referenced.emplace_back(value->chunk_id, value->length);
        continue;
      }
      dead.push_back({core.refs_cf, it->key().ToString(), {1, value->length, 0}, *value});
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "scanning chunk refs"));
  }
  std::sort(dead.begin(), dead.end(), [](const Entry& a, const Entry& b) {
    return a.referenced->chunk_id < b.referenced->chunk_id;
  });

  // Held until the batches are written: see StoreCore::pin_mu.
  std::lock_guard<std::mutex> pin_lock(core.pin_mu);
  for (Entry& entry : dead) {
    if (core.pins.contains(entry.key)) {
      use.referenced.emplace_back(entry.referenced->chunk_id, entry.referenced->length);
    } else {
      entries.push_back(std::move(entry));
    }
  }
  PhaseOne out;
  rocksdb::WriteOptions sync;
  sync.sync = true;
  size_t next = 0;  // entries[next..] are not written yet
  while (next < entries.size()) {
    // Up to kGcBatchBytes of entries, written in key order (the refs
    // memtable's insert hint: rocksdb_open.cc).
    size_t end = next;
    for (uint64_t bytes = 0; end < entries.size() && bytes < kGcBatchBytes; ++end) {
      bytes += entries[end].key.size() + 8;  // a delete's record, about
    }
    std::sort(entries.begin() + static_cast<ptrdiff_t>(next),
              entries.begin() + static_cast<ptrdiff_t>(end),
              [](const Entry& a, const Entry& b) { return a.key < b.key; });
    rocksdb::WriteBatch batch;
    std::vector<std::pair<std::string, Digest>> gone;  // (namespace, digest)
    for (size_t i = next; i < end; ++i) {
      batch.Delete(entries[i].cf, entries[i].key);
      if (entries[i].cf != core.refs_cf) continue;
      if (auto key = ParseRefKey(entries[i].key); key.ok()) gone.push_back(std::move(*key));
    }
    // Loads no longer find these chunks where they were, nor record them
    // again meanwhile (ChunkLocations).
    rocksdb::Status s;
    core.locations.Forget(
        gone, [&] { s = core.WriteRefs(sync, &batch, StoreCore::Room::kMayUseReserve); });
    if (!s.ok()) {
      // No room (StoreCore::Write refuses before RocksDB sees the batch; a
      // RocksDB that met the full disk itself may have kept it: counting
      // its entries as referenced is safe either way): stop here when an
      // earlier batch made progress; otherwise it is the answer.
      if (!s.IsNoSpace() || next == 0) {
        return FromRocksDb(s, "collecting garbage");
      }
      out.cut_short = true;
      break;
    }
    CKPT_CRASH_POINT("gc.after_batch");
    for (; next < end; ++next) AddTo(out.removed, entries[next].removes);
  }
  for (size_t i = next; i < entries.size(); ++i) {
    if (const auto& ref = entries[i].referenced) {
      use.referenced.emplace_back(ref->chunk_id, ref->length);
    }
  }
  std::sort(use.referenced.begin(), use.referenced.end());
  return out;
}

}  // namespace

absl::StatusOr<GcResult> RocksDbStore::CollectGarbage() {
  std::lock_guard<std::mutex> gc_lock(core_->gc_mu);
  GcResult result;
  // Phase 2, with commits running again: reclaim the space of chunk files.
  // A file without one referenced chunk is dropped whole; a file with enough
  // garbage is rewritten by a compaction of its own key range only, so other
  // chunk files are never rewritten. When the first phase was cut short by a
  // full disk, the files it freed make room for the next round.
  // A round refused for room after the previous one dropped files waits a
  // little (up to kRecoveryWait, looking at the free space only) for the
  // room of a batch to show, then tries once more: RocksDB deletes a dropped
  // file once no reader or job uses it.
  bool may_wait = false;
  for (int round = 0;; ++round) {
    ChunkUse use;
    absl::StatusOr<PhaseOne> one = DropDeadEntries(*core_, use);
    if (!one.ok()) {
      if (round == 0 || !absl::IsResourceExhausted(one.status())) return one.status();
      // Nothing more fits: what the earlier rounds removed is the answer.
      if (!may_wait) break;
      may_wait = false;
      const uint64_t needed = core_->RoomNeeded(kGcBatchBytes, StoreCore::Room::kMayUseReserve);
      const absl::Time deadline = absl::Now() + StoreCore::kRecoveryWait;
      while (core_->FreeSpace() < needed && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(100));
      }
      continue;
    }
    AddTo(result, one->removed);
    CKPT_CRASH_POINT("gc.before_reclaim");
    CKPT_ASSIGN_OR_RETURN(const uint64_t dropped, ReclaimChunkFiles(*core_, use));
    if (!one->cut_short) break;
    may_wait = dropped > 0;
  }
  core_->RestoreReserve();
  return result;
}

}  // namespace ckpt::storage
