// Opening the RocksDB store: options of the database and its column
// families, the on-disk format check, cleaning up after a dead process and
// recovering the chunk-id and upload-id allocators and per-namespace usage.

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "rocksdb/cache.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/slice_transform.h"
#include "rocksdb/table.h"
#include "storage/codec.h"
#include "storage/rados_store.h"
#include "storage/rocksdb_log.h"
#include "storage/rocksdb_status.h"
#include "storage/rocksdb_store.h"
#include "storage/store_core.h"

namespace ckpt::storage {

namespace fs = std::filesystem;

using internal::FsError;
using internal::ScanIterator;
using internal::StoreCore;
using internal::View;

namespace {

// The on-disk format version (kFormatKey): recorded in a new store, checked
// in an existing one before anything else is written to it. An older format
// this code reads is upgraded (the key rewritten: older servers then refuse
// the store instead of misreading what newer versions hold).
absl::Status CheckFormat(StoreCore& core) {
  std::string value;
  rocksdb::Status s = core.db->Get(rocksdb::ReadOptions(), core.default_cf, kFormatKey, &value);
  uint64_t version = kOldestStoreFormat;  // a store from before the key existed
  if (!s.IsNotFound()) {
    CKPT_RETURN_IF_ERROR(FromRocksDb(s, "reading the store's format version"));
    auto stored = DecodeBigEndian64(value);
    if (!stored.ok()) return Annotate(stored.status(), "reading the store's format version");
    version = *stored;
  }
  if (version == kStoreFormatVersion && !s.IsNotFound()) return absl::OkStatus();
  if (version > kStoreFormatVersion || version < kOldestStoreFormat) {
    return absl::FailedPreconditionError(
        absl::StrCat("the store at ", core.options.path, " has on-disk format version ", version,
                     ", and this server reads formats ", kOldestStoreFormat, " to ",
                     kStoreFormatVersion, ": run a ckpt-server release that reads format ", version,
                     " (README: Backup, restore and upgrade); nothing was changed"));
  }
  rocksdb::WriteOptions w;
  w.sync = true;
  // A few bytes without which the server cannot start: they may use the
  // room kept for deletes and gc (a new store on a nearly full disk opens,
  // and refuses saves in words until there is room).
  return FromRocksDb(
      core.PutOne(w, core.default_cf, kFormatKey, EncodeBigEndian64(kStoreFormatVersion),
                  StoreCore::Room::kMayUseReserve),
      "recording the store's format version");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  if (options.backend == StoreBackend::kRados) {
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RadosStore> store, RadosStore::Open(options));
    return std::unique_ptr<Store>(std::move(store));
  }
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RocksDbStore> store, RocksDbStore::Open(options));
  return std::unique_ptr<Store>(std::move(store));
}

absl::StatusOr<std::unique_ptr<RocksDbStore>> RocksDbStore::Open(const StoreOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("store path is empty");
  if (options.max_chunk_bytes == 0) {
    return absl::InvalidArgumentError("max_chunk_bytes must be positive");
  }
  const RocksDbTuning& tuning = options.rocksdb;
  if (tuning.max_background_jobs < 1 || tuning.write_buffer_bytes == 0 ||
      tuning.manifest_write_buffer_bytes == 0) {
    return absl::InvalidArgumentError(
        "rocksdb tuning: max_background_jobs, write_buffer_bytes and manifest_write_buffer_bytes "
        "must be positive");
  }
  std::error_code ec;
  fs::create_directories(options.path, ec);
  if (ec) return FsError(ec, absl::StrCat("creating ", options.path));

  auto core = std::make_shared<StoreCore>();
  core->options = options;
  core->reserve_path = (fs::path(options.path) / "RESERVED").string();
  // Opening writes (a new MANIFEST, OPTIONS, WAL): on a full disk the
  // reserve makes room for it.
  if (options.reserved_disk_bytes > 0 &&
      StoreCore::FreeBytes(options.path) < options.reserved_disk_bytes) {
    core->DropReserve();
  }

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = tuning.max_background_jobs;
  db_options.bytes_per_sync = 1 << 20;
  // RocksDB's LOG through our logger: its own aborts on a full disk.
  db_options.info_log = internal::OpenRocksDbLog(options.path, /*keep_files=*/4,
                                                 /*max_file_bytes=*/uint64_t{64} << 20);
  // Recovered WAL records are flushed while opening when the disk has room
  // for every memtable (the memtables start empty, as deletes and gc on a
  // full disk later expect); on a fuller disk they stay in the memtables: a
  // restart on a full disk needs no room for new files.
  const uint64_t memtables =
      2 * (4 * tuning.write_buffer_bytes + tuning.manifest_write_buffer_bytes);  // two per family
  db_options.avoid_flush_during_recovery =
      StoreCore::FreeBytes(options.path) < options.reserved_disk_bytes + memtables;
  // No preallocation: a WAL would otherwise take 1.1x a memtable (70 MiB) of
  // the disk up front, space the free-space checks cannot see.
  db_options.allow_fallocate = false;
  // Chunk reads then copy straight out of the page cache: no heap block
  // per read (fresh pages cost ~1 GB/s here), no second copy.
  db_options.allow_mmap_reads = true;

  // Metadata families: small values, point lookups, a shared block cache.
  std::shared_ptr<rocksdb::Cache> cache;
  if (tuning.metadata_block_cache_bytes > 0) {
    cache = rocksdb::NewLRUCache(tuning.metadata_block_cache_bytes);
  }
  rocksdb::BlockBasedTableOptions meta_table;
  meta_table.checksum = rocksdb::kXXH3;
  meta_table.block_cache = cache;
  meta_table.no_block_cache = cache == nullptr;
  meta_table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  rocksdb::ColumnFamilyOptions meta_options;
  meta_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(meta_table));
  // Small memtables: after a write error on a full disk RocksDB resumes only
  // once its largest memtable fits in the free space
  // (manifest_write_buffer_bytes, well under the reserved space), and
  // flushes stay short.
  meta_options.write_buffer_size = tuning.write_buffer_bytes;

  // Chunks: incompressible tensor bytes read once per restore, so no
  // compression and no block cache (reads go to the page cache). No block
  // checksums either: every chunk read checks the chunk's own digest
  // (xxh3-128, the digest the client sent), so a block checksum would be a
  // second hashing pass over every byte saved (~4 % of a save's server CPU)
  // that no read looks at. (Their index blocks go unchecked too: a damaged
  // one can only send a read to other bytes, which the digest check
  // reports as DataLoss, or past the file's end, an IO error.)
  rocksdb::BlockBasedTableOptions chunk_table;
  chunk_table.checksum = rocksdb::kNoChecksum;
  chunk_table.no_block_cache = true;
  chunk_table.block_cache = nullptr;
  chunk_table.block_size = 64 << 10;
  rocksdb::ColumnFamilyOptions chunk_options;
  chunk_options.compression = rocksdb::kNoCompression;
  chunk_options.bottommost_compression = rocksdb::kDisableCompressionOption;
  // Never rewrite chunk files for age (the defaults may pick 30 days); only
  // GC's targeted compactions rewrite them.
  chunk_options.ttl = 0;
  chunk_options.periodic_compaction_seconds = 0;
  chunk_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(chunk_table));
  // Only GC's tombstones go through the chunks memtable.
  chunk_options.write_buffer_size = tuning.write_buffer_bytes;

  // refs: every save writes one entry per chunk, so a big memtable fills
  // with stale copies of the same keys and every lookup walks a deeper
  // skiplist (20k-tensor saves slowed from 0.22 to 0.31 s over 20 saves with
  // the 64 MiB default; flat at ~0.18 s with 4 MiB). Flushed entries are
  // found through bloom filters and the block cache.
  rocksdb::ColumnFamilyOptions refs_options = meta_options;
  refs_options.write_buffer_size = tuning.write_buffer_bytes;
  // Commits and deletes write their entries in key order. With an insert
  // hint (one for all keys: the empty prefix) the memtable finds each
  // entry's place by walking up from the last one's, not down from the top
  // of its skip list. Reads are unaffected.
  refs_options.memtable_insert_with_hint_prefix_extractor.reset(
      rocksdb::NewCappedPrefixTransform(0));
  // A bloom filter over the refs memtable's keys (a tenth of its size): a
  // save's lookups of new chunks, which miss, skip the skip-list search (a
  // save of 20,000 new small tensors: ~10 % less server CPU, 6 alternating
  // pairs of 10 saves).
  refs_options.memtable_whole_key_filtering = true;
  refs_options.memtable_prefix_bloom_size_ratio = 0.1;
  // Manifests: a 20k-tensor version writes several MB at once.
  rocksdb::ColumnFamilyOptions manifest_options = meta_options;
  manifest_options.write_buffer_size = tuning.manifest_write_buffer_bytes;

  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, meta_options},
      {kChunksFamily, chunk_options},
      {kRefsFamily, refs_options},
      {kManifestsFamily, manifest_options},
      {kTagsFamily, meta_options},
  };
  rocksdb::Status opened =
      rocksdb::DB::Open(db_options, options.path, families, &core->handles, &core->db);
  if (opened.IsIOError() && absl::StrContains(opened.ToString(), "While lock file") &&
      absl::StrContains(opened.ToString(), "Resource temporarily unavailable")) {
    // RocksDB's "IO error: While lock file: .../LOCK: Resource temporarily
    // unavailable" does not say who holds it.
    return absl::FailedPreconditionError(
        absl::StrCat("the store at ", options.path,
                     " is in use by another process (another ckpt-server?), which holds its LOCK "
                     "file: stop that one or choose another --data-dir"));
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(opened, absl::StrCat("opening store at ", options.path)));
  core->default_cf = core->handles[0];
  core->chunks_cf = core->handles[1];
  core->refs_cf = core->handles[2];
  core->manifests_cf = core->handles[3];
  core->tags_cf = core->handles[4];
  core->chunk_file_options = rocksdb::Options(db_options, chunk_options);
  core->chunk_env_options = rocksdb::EnvOptions(db_options);
  CKPT_RETURN_IF_ERROR(CheckFormat(*core));

  // The LOCK is ours now: files left in ingest/ belong to a dead process and
  // were never ingested (ingestion moves them out).
  // Tombstones of a collection cut short by a crash come back from the
  // WAL; flushed now, they cannot join those of the next collection into one
  // file spanning unrelated chunk files.
  CKPT_RETURN_IF_ERROR(FromRocksDb(core->db->Flush(rocksdb::FlushOptions(), core->chunks_cf),
                                   "flushing chunk tombstones"));
  core->ingest_dir = (fs::path(options.path) / "ingest").string();
  fs::remove_all(core->ingest_dir, ec);
  if (ec) return FsError(ec, absl::StrCat("cleaning ", core->ingest_dir));
  fs::create_directories(core->ingest_dir, ec);
  if (ec) return FsError(ec, absl::StrCat("creating ", core->ingest_dir));

  // Recover the allocators: past every reserved block, every chunk key and
  // every pending range; past every pending upload id.
  rocksdb::ReadOptions ro;
  uint64_t next_block = 1;
  {
    std::string value;
    rocksdb::Status s = core->db->Get(ro, core->default_cf, kNextBlockKey, &value);
    if (!s.IsNotFound()) {
      CKPT_RETURN_IF_ERROR(FromRocksDb(s, "reading the chunk-id allocator"));
      CKPT_ASSIGN_OR_RETURN(uint64_t reserved, DecodeBigEndian64(value));
      next_block = std::max(next_block, reserved);
    }
  }
  {
    std::unique_ptr<rocksdb::Iterator> it(core->db->NewIterator(ro, core->chunks_cf));
    it->SeekToLast();
    if (it->Valid()) {
      CKPT_ASSIGN_OR_RETURN(uint64_t last, ParseChunkKey(View(it->key())));
      next_block = std::max(next_block, (last >> kChunkIdBlockBits) + 1);
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading the last chunk id"));
  }
  uint64_t next_upload_id = 1;
  {
    ScanIterator it(core->db, core->default_cf, ro, std::string(kPendingPrefix),
                    PrefixSuccessor(kPendingPrefix));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto id = ParsePendingKey(View(it->key()));
      if (!id.ok()) continue;  // GC drops malformed records.
      next_upload_id = std::max(next_upload_id, *id + 1);
      auto record = DecodePendingRecord(View(it->value()));
      if (!record.ok()) continue;
      for (const ChunkIdRange& r : record->ranges) {
        next_block = std::max(next_block, (r.hi >> kChunkIdBlockBits) + 1);
      }
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading pending uploads"));
  }
  // Per-namespace usage: one pass over the refs (small values, one per
  // distinct chunk), so that quota checks never scan.
  {
    std::unique_ptr<rocksdb::Iterator> it(core->db->NewIterator(ro, core->refs_cf));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      auto key = ParseRefKey(View(it->key()));
      auto value = DecodeRefValue(View(it->value()));
      if (!key.ok() || !value.ok() || value->refcount == 0) continue;
      core->ns_bytes[key->first] += value->length;
    }
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading chunk refs"));
  }
  core->next_block = next_block;
  core->persisted_block = next_block;  // Nothing past it is reserved yet.
  core->next_upload_id = next_upload_id;
  core->RestoreReserve();
  return std::unique_ptr<RocksDbStore>(new RocksDbStore(std::move(core)));
}

RocksDbStore::RocksDbStore(std::shared_ptr<internal::StoreCore> core) : core_(std::move(core)) {}

RocksDbStore::~RocksDbStore() = default;

}  // namespace ckpt::storage
