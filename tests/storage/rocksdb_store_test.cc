// Tests of the RocksDB backend's own layout and recovery: SST ingestion
// into the bottommost level, GC rewriting only files with garbage, chunk-id
// allocation, the ingest directory, the format key and damage found by
// reading the database directly. What every backend must do is in the
// conformance suite (store_test.cc).

#include "storage/rocksdb_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdio.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/perf_context.h"
#include "rocksdb/perf_level.h"
#include "storage/codec.h"
#include "tests/storage/store_test_util.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::storage::test {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// The store's column families in the order RocksDbStore opens them
// (handles[1] is the chunks family), with default options, for a raw DB.
std::vector<rocksdb::ColumnFamilyDescriptor> StoreFamilies() {
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const char* name : {rocksdb::kDefaultColumnFamilyName.c_str(), kChunksFamily, kRefsFamily,
                           kManifestsFamily, kTagsFamily}) {
    families.emplace_back(name, rocksdb::ColumnFamilyOptions());
  }
  return families;
}

// Metadata of the chunks CF's SST files, read with a raw read-only DB.
std::vector<rocksdb::LiveFileMetaData> ChunkFiles(const std::string& db_path) {
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s =
      rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(), db_path, StoreFamilies(), &handles, &raw);
  EXPECT_TRUE(s.ok()) << s.ToString();
  std::vector<rocksdb::LiveFileMetaData> all, chunks;
  if (!s.ok()) return chunks;
  raw->GetLiveFilesMetaData(&all);
  for (auto& f : all) {
    if (f.column_family_name == kChunksFamily) chunks.push_back(f);
  }
  for (auto* h : handles) raw->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  delete raw;
  return chunks;
}

// A RocksDB store in a fresh directory per test.
class RocksDbStoreTest : public StoreHarness, public ::testing::Test {
 protected:
  void SetUp() override { StartStore(Backend::kRocksDb); }
  void TearDown() override { StopStore(); }

  RocksDbStore& rocks() { return static_cast<RocksDbStore&>(*store_); }

  // Whether a chunk file appears in ingest/ within 10 s (an upload writes
  // its files on a thread of its own).
  bool AwaitIngestFile() {
    const fs::path dir = fs::path(Options().path) / "ingest";
    for (int i = 0; i < 1000; ++i) {
      if (fs::exists(dir) && !fs::is_empty(dir)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
};

TEST_F(RocksDbStoreTest, IngestedFilesLandInTheBottommostLevel) {
  ASSERT_TRUE(Save("a/b", Model()).ok());
  ASSERT_TRUE(Save("a/c", {{"other", RandomBytes(2500, 31)}}).ok());
  EXPECT_TRUE(fs::is_empty(fs::path(Options().path) / "ingest"));
  // A sealed orphan, to be collected below.
  {
    auto up = store_->BeginUpload("a/d");
    ASSERT_TRUE(up.ok());
    ASSERT_OK(UploadMissing(**up, {{"orphan", RandomBytes(3000, 32)}}));
    ASSERT_OK((*up)->Seal());
  }
  Close();
  auto files = ChunkFiles(Options().path);
  ASSERT_EQ(files.size(), 3u);  // One per upload, none overlapping.
  std::string model_file;
  for (const auto& f : files) {
    EXPECT_EQ(f.level, 6) << f.name;
    if (f.num_entries == 5) model_file = f.name;
  }

  Reopen();
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.orphan_uploads_removed, 1u);
  EXPECT_EQ(gc.chunks_removed, 3u);
  // Deleting a/c and collecting rewrites nothing but its own file.
  ASSERT_TRUE(store_->DeleteVersion("a/c", 1, false).ok());
  ASSERT_OK_AND_ASSIGN(gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 3u);
  Close();
  files = ChunkFiles(Options().path);
  ASSERT_EQ(files.size(), 1u);  // Only a/b's file is left, untouched.
  EXPECT_EQ(files[0].level, 6);
  EXPECT_EQ(files[0].name, model_file);
  Reopen();
  ExpectContents("a/b", 1, Model());
}

TEST_F(RocksDbStoreTest, GcRewritesOnlyTheFileHoldingGarbage) {
  const std::string p = RandomBytes(2000, 51), q = RandomBytes(2000, 52);
  ASSERT_TRUE(Save("a/x", Model()).ok());                         // File A.
  ASSERT_TRUE(Save("a/y", {{"p", p}, {"q", q}}).ok());            // File B.
  ASSERT_TRUE(Save("a/w", {{"w", RandomBytes(3000, 53)}}).ok());  // File C.
  ASSERT_OK_AND_ASSIGN(VersionInfo keep_q, Save("a/v", {{"q", q}}));
  EXPECT_EQ(keep_q.new_bytes, 0u);
  Close();
  auto before = ChunkFiles(Options().path);
  ASSERT_EQ(before.size(), 3u);
  Reopen();

  // Half of B becomes garbage.
  ASSERT_OK_AND_ASSIGN(uint64_t freed, store_->DeleteVersion("a/y", 1, false));
  EXPECT_EQ(freed, 2u);
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 2u);
  EXPECT_EQ(gc.bytes_removed, 2000u);
  EXPECT_EQ(StoredChunks(), 5u + 2 + 3);
  ExpectContents("a/v", 1, {{"q", q}});
  ExpectContents("a/x", 1, Model());
  Close();

  auto after = ChunkFiles(Options().path);
  ASSERT_EQ(after.size(), 3u);
  std::map<std::string, uint64_t> entries_before, entries_after;
  for (const auto& f : before) entries_before[f.name] = f.num_entries;
  for (const auto& f : after) {
    EXPECT_EQ(f.level, 6) << f.name;
    entries_after[f.name] = f.num_entries;
  }
  int kept = 0;
  for (const auto& [name, n] : entries_after) {
    if (entries_before.count(name)) {
      ++kept;  // A (5 entries) and C (3) are untouched.
      EXPECT_TRUE(n == 5 || n == 3) << name;
    } else {
      EXPECT_EQ(n, 2u) << name;  // B rewritten with q's chunks only.
    }
  }
  EXPECT_EQ(kept, 2);
  Reopen();
}

// An upload whose chunk files never made it into the database (its ingest
// failed) leaves a pending record: gc drops it and reports no bytes, since
// none were written.
TEST_F(RocksDbStoreTest, GcCountsOnlyChunksReallyWritten) {
  {
    auto up = store_->BeginUpload("a/b");
    ASSERT_TRUE(up.ok());
    ASSERT_OK(UploadMissing(**up, {{"o", RandomBytes(2500, 12)}}));
    // The chunk file (written on the upload's own thread) vanishes before
    // the ingest.
    ASSERT_TRUE(AwaitIngestFile());
    for (const auto& f : fs::directory_iterator(fs::path(Options().path) / "ingest")) {
      fs::remove(f.path());
    }
    EXPECT_FALSE((*up)->Seal().ok());
  }
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.orphan_uploads_removed, 1u);
  EXPECT_EQ(gc.chunks_removed, 0u);
  EXPECT_EQ(gc.bytes_removed, 0u);
}

// An unsealed upload leaves no files behind in ingest/, also when destroyed
// while its thread writes them.
TEST_F(RocksDbStoreTest, UnsealedUploadDestroyedLeavesNoIngestFiles) {
  {
    auto up = store_->BeginUpload("a/b");
    ASSERT_TRUE(up.ok());
    ASSERT_OK(UploadMissing(**up, Model()));
    EXPECT_TRUE(AwaitIngestFile());
  }
  EXPECT_TRUE(fs::is_empty(fs::path(Options().path) / "ingest"));
}

// A chunk file that cannot be written (its directory is gone) breaks the
// upload: the error comes back from a later PutChunk or from Seal, every
// call after returns the same error, and nothing reaches the database.
TEST_F(RocksDbStoreTest, AFailedBackgroundWriteBreaksTheUpload) {
  {
    auto up = store_->BeginUpload("a/b");
    ASSERT_TRUE(up.ok());
    fs::remove_all(fs::path(Options().path) / "ingest");
    const std::string first = RandomBytes(2500, 41);
    const absl::Status put = (*up)->PutChunk(Digest::Of(first), std::string(first));
    const absl::Status seal = (*up)->Seal();
    ASSERT_FALSE(seal.ok());
    EXPECT_THAT(std::string(seal.message()), HasSubstr("creating "));
    if (!put.ok()) EXPECT_EQ(put, seal);
    const std::string second = RandomBytes(2500, 42);
    EXPECT_EQ((*up)->PutChunk(Digest::Of(second), AsBytes(second)), seal);
    EXPECT_EQ((*up)->Seal(), seal);
  }
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 0u);
}

// Chunk ids never repeat: not after GC removed the newest chunks, not
// after a restart.
TEST_F(RocksDbStoreTest, ChunkIdsAreNeverReused) {
  ASSERT_TRUE(Save("a/b", Model(), {"best"}).ok());
  const Digest old_digest = MakeTree(Model())[1].data.chunks[0];
  ASSERT_OK_AND_ASSIGN(uint64_t old_id, rocks().ChunkIdOf("a/b", old_digest));
  // The newest chunks are deleted and collected: their ids must not return.
  std::vector<Blob> newer = {{"n", RandomBytes(1000, 21)}};
  ASSERT_TRUE(Save("z/z", newer).ok());
  ASSERT_OK_AND_ASSIGN(uint64_t newer_id, rocks().ChunkIdOf("z/z", Digest::Of(newer[0].bytes)));
  ASSERT_TRUE(store_->DeleteVersion("z/z", 1, false).ok());
  ASSERT_TRUE(store_->CollectGarbage().ok());

  Reopen();
  std::vector<Blob> fresh = {{"f", RandomBytes(1000, 22)}};
  ASSERT_OK(Save("a/b", fresh).status());
  ASSERT_OK_AND_ASSIGN(uint64_t fresh_id, rocks().ChunkIdOf("a/b", Digest::Of(fresh[0].bytes)));
  EXPECT_GT(fresh_id, old_id);
  EXPECT_GT(fresh_id, newer_id);
  EXPECT_NE(fresh_id >> kChunkIdBlockBits, newer_id >> kChunkIdBlockBits);
}

TEST_F(RocksDbStoreTest, CorruptChunkIsDataLoss) {
  ASSERT_TRUE(Save("a/b", Model()).ok());
  const Digest digest = MakeTree(Model())[1].data.chunks[1];
  ASSERT_OK_AND_ASSIGN(uint64_t id, rocks().ChunkIdOf("a/b", digest));
  const std::string db_path = Options().path;
  Close();
  {
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(
        rocksdb::DB::Open(rocksdb::DBOptions(), db_path, StoreFamilies(), &handles, &raw).ok());
    std::string flipped = Model()[0].bytes.substr(kChunk, kChunk);
    flipped[17] ^= 1;
    rocksdb::WriteOptions sync;
    sync.sync = true;
    ASSERT_TRUE(raw->Put(sync, handles[1], ChunkKey(id), flipped).ok());
    for (auto* h : handles) ASSERT_TRUE(raw->DestroyColumnFamilyHandle(h).ok());
    ASSERT_TRUE(raw->Close().ok());
    delete raw;
  }
  Reopen();
  std::string out;
  absl::Status s = store_->ReadChunk("a/b", digest, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), "chunk " + digest.Hex() + " checksum mismatch");
  EXPECT_TRUE(out.empty());
  // Other chunks still read.
  ASSERT_OK(store_->ReadChunk("a/b", MakeTree(Model())[1].data.chunks[0], &out));
}

// Chunk files carry no RocksDB block checksums (every read checks the
// chunk's digest instead): a bit flipped on disk inside a chunk is still
// DataLoss, and the other chunks of the same file still read.
TEST_F(RocksDbStoreTest, ABitFlippedOnDiskIsDataLoss) {
  const std::vector<Blob> blobs = {{"a", RandomBytes(5 * kChunk, 71)}};
  ASSERT_TRUE(Save("a/rot", blobs).ok());
  const Tree tree = MakeTree(blobs);
  const Digest hit = tree[1].data.chunks[2], other = tree[1].data.chunks[3];
  const std::string db_path = Options().path;
  Close();
  // Find chunk 2's bytes in the chunk files and flip one bit in its middle.
  const std::string chunk = blobs[0].bytes.substr(2 * kChunk, kChunk);
  int flipped = 0;
  for (const auto& entry : fs::recursive_directory_iterator(db_path)) {
    if (entry.path().extension() != ".sst") continue;
    std::string file;
    {
      std::ifstream in(entry.path(), std::ios::binary);
      file.assign(std::istreambuf_iterator<char>(in), {});
    }
    const size_t at = file.find(chunk);
    if (at == std::string::npos) continue;
    file[at + kChunk / 2] ^= 0x10;
    std::ofstream out(entry.path(), std::ios::binary | std::ios::trunc);
    out.write(file.data(), static_cast<std::streamsize>(file.size()));
    ASSERT_TRUE(out.good());
    ++flipped;
  }
  ASSERT_EQ(flipped, 1);
  Reopen();
  std::string out;
  absl::Status s = store_->ReadChunk("a/rot", hit, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), "chunk " + hit.Hex() + " checksum mismatch");
  ASSERT_OK(store_->ReadChunk("a/rot", other, &out));
  EXPECT_EQ(out, blobs[0].bytes.substr(3 * kChunk, kChunk));
  // Read together with its neighbours, it alone is refused, with the same
  // message.
  const auto together = store_->ReadSharedChunks("a/rot", tree[1].data.chunks);
  ASSERT_EQ(together.size(), 5u);
  for (size_t i = 0; i < together.size(); ++i) {
    SCOPED_TRACE(i);
    if (i == 2) {
      EXPECT_EQ(together[i].status(), s);
      continue;
    }
    ASSERT_OK(together[i].status());
    EXPECT_EQ(together[i]->bytes, blobs[0].bytes.substr(i * kChunk, kChunk));
  }
}

TEST(StoreOpenTest, RecordsTheFormatVersionAndRefusesAnother) {
  std::string tmpl = (fs::temp_directory_path() / "ckpt-store-test-XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  StoreOptions options;
  options.path = tmpl + "/db";
  options.reserved_disk_bytes = 0;
  ASSERT_OK(Store::Open(options).status());

  // Read and rewrite the format key with a raw RocksDB handle.
  auto with_raw_db =
      [&](const std::function<void(rocksdb::DB*, rocksdb::ColumnFamilyHandle*)>& fn) {
        std::vector<std::string> names;
        ASSERT_TRUE(
            rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), options.path, &names).ok());
        std::vector<rocksdb::ColumnFamilyDescriptor> families;
        for (const std::string& n : names) families.emplace_back(n, rocksdb::ColumnFamilyOptions());
        std::vector<rocksdb::ColumnFamilyHandle*> handles;
        rocksdb::DB* raw = nullptr;
        ASSERT_TRUE(
            rocksdb::DB::Open(rocksdb::DBOptions(), options.path, families, &handles, &raw).ok());
        fn(raw, handles[0]);
        for (auto* h : handles) raw->DestroyColumnFamilyHandle(h).PermitUncheckedError();
        delete raw;
      };
  with_raw_db([&](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf) {
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), cf, kFormatKey, &value).ok());
    EXPECT_EQ(value, EncodeBigEndian64(kStoreFormatVersion));
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), cf, kFormatKey, EncodeBigEndian64(3)).ok());
  });
  auto refused = Store::Open(options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("has on-disk format version 3, and this server reads formats 1 to 2"));
  // Refused without changing it.
  with_raw_db([&](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf) {
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), cf, kFormatKey, &value).ok());
    EXPECT_EQ(value, EncodeBigEndian64(3));
    // A store from before the key existed is format 1 and gets the key.
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), cf, kFormatKey).ok());
  });
  ASSERT_OK(Store::Open(options).status());
  with_raw_db([&](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf) {
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), cf, kFormatKey, &value).ok());
    EXPECT_EQ(value, EncodeBigEndian64(kStoreFormatVersion));
    // Format 1, recorded (the last release's stores): upgraded to 2.
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), cf, kFormatKey, EncodeBigEndian64(1)).ok());
  });
  ASSERT_OK(Store::Open(options).status());
  with_raw_db([&](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf) {
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), cf, kFormatKey, &value).ok());
    EXPECT_EQ(value, EncodeBigEndian64(2));
  });
  fs::remove_all(tmpl);
}

// RocksDbTuning reaches the database (its OPTIONS file says so); values
// that cannot work are refused.
TEST_F(RocksDbStoreTest, TuningOptionsReachRocksDbAndAreChecked) {
  Close();
  StoreOptions options = Options();
  options.rocksdb.max_background_jobs = 3;
  options.rocksdb.write_buffer_bytes = 2 << 20;
  options.rocksdb.manifest_write_buffer_bytes = 8 << 20;
  options.rocksdb.metadata_block_cache_bytes = 0;
  ASSERT_OK_AND_ASSIGN(store_, OpenStore(Backend::kRocksDb, options));
  ASSERT_OK(Save("a/b", Model()).status());
  // The newest OPTIONS-<number> file (zero-padded: the greatest name).
  std::string newest;
  for (const auto& e : fs::directory_iterator(options.path)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("OPTIONS-", 0) == 0 && name > newest) newest = name;
  }
  ASSERT_FALSE(newest.empty());
  FILE* f = fopen((fs::path(options.path) / newest).c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::string text;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
  fclose(f);
  EXPECT_THAT(text, HasSubstr("max_background_jobs=3"));
  EXPECT_THAT(text, HasSubstr("write_buffer_size=2097152"));
  EXPECT_THAT(text, HasSubstr("write_buffer_size=8388608"));
  EXPECT_THAT(text, HasSubstr("no_block_cache=true"));
  Close();

  for (auto bad :
       {&RocksDbTuning::write_buffer_bytes, &RocksDbTuning::manifest_write_buffer_bytes}) {
    StoreOptions zero = Options();
    zero.rocksdb.*bad = 0;
    EXPECT_EQ(OpenStore(Backend::kRocksDb, zero).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  StoreOptions no_jobs = Options();
  no_jobs.rocksdb.max_background_jobs = 0;
  EXPECT_EQ(OpenStore(Backend::kRocksDb, no_jobs).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A store directory is opened by one store at a time (RocksDB's LOCK).
TEST_F(RocksDbStoreTest, ASecondOpenOfTheSameDirectoryFails) {
  auto second = OpenStore(Backend::kRocksDb, Options());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kInternal) << second.status();
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("LOCK"));
  // The first one is unaffected.
  ASSERT_OK(Save("a/b", Model()).status());
}

// Open removes what a dead process left in ingest/.
TEST(StoreOpenTest, CleansIngestDir) {
  std::string tmpl = (fs::temp_directory_path() / "ckpt-store-test-XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  StoreOptions options;
  options.path = tmpl + "/nested/db";
  {
    auto store = Store::Open(options);
    ASSERT_TRUE(store.ok()) << store.status();
  }
  std::string leftover = options.path + "/ingest/7-0.sst";
  FILE* f = fopen(leftover.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  {
    auto store = Store::Open(options);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_FALSE(fs::exists(leftover));
  }
  fs::remove_all(tmpl);
}

// Options of a store in `dir` without a reserve file.
StoreOptions StoreIn(const ckpt::testing::TempDir& dir) {
  StoreOptions options;
  options.path = dir.path() + "/db";
  options.reserved_disk_bytes = 0;
  return options;
}

// Chunks of kPinnedReadBytes and more are read without a copy, smaller ones
// copied; either stays valid and unchanged for as long as it is held, also
// once its version is deleted and the chunk collected.
TEST(RocksDbSharedReadTest, ChunksReadWithoutACopyStayValidWhileHeld) {
  ckpt::testing::TempDir dir;
  StoreOptions options = StoreIn(dir);
  options.max_chunk_bytes = 4 << 20;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenStore(Backend::kRocksDb, options));
  const std::string big = RandomBytes(kPinnedReadBytes + 1, 51);
  const std::string small = RandomBytes(1000, 52);
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Upload> up, store->BeginUpload("a/b"));
    CommitSpec spec;
    spec.name = "a/b";
    spec.tree.resize(1);
    spec.tree[0].kind = NodeKind::kDict;
    spec.tree[0].size = 2;
    for (const std::string* bytes : {&big, &small}) {
      ASSERT_OK(up->PutChunk(Digest::Of(*bytes), AsBytes(*bytes)));
      Node n;
      n.kind = NodeKind::kTensor;
      n.key = bytes == &big ? "big" : "small";
      n.tensor.dtype = DType::kUInt8;
      n.tensor.shape = {static_cast<int64_t>(bytes->size())};
      n.data.size = n.data.chunk_size = bytes->size();
      n.data.chunks = {Digest::Of(*bytes)};
      spec.tree.push_back(std::move(n));
    }
    Upload* ups[] = {up.get()};
    ASSERT_OK(store->Commit(std::move(spec), ups).status());
  }
  ASSERT_OK_AND_ASSIGN(Store::SharedBytes big_read, store->ReadSharedChunk("a/b", Digest::Of(big)));
  ASSERT_OK_AND_ASSIGN(Store::SharedBytes small_read,
                       store->ReadSharedChunk("a/b", Digest::Of(small)));
  EXPECT_EQ(big_read.bytes, big);
  EXPECT_EQ(small_read.bytes, small);
  // Not copied: a second read of the large chunk sees the same bytes in
  // place (the memory-mapped file); the small one gets a copy of its own.
  ASSERT_OK_AND_ASSIGN(Store::SharedBytes big_again,
                       store->ReadSharedChunk("a/b", Digest::Of(big)));
  ASSERT_OK_AND_ASSIGN(Store::SharedBytes small_again,
                       store->ReadSharedChunk("a/b", Digest::Of(small)));
  EXPECT_EQ(big_again.bytes.data(), big_read.bytes.data());
  EXPECT_NE(small_again.bytes.data(), small_read.bytes.data());
  std::string copy;
  ASSERT_OK(store->ReadChunk("a/b", Digest::Of(big), &copy));
  EXPECT_EQ(copy, big);
  // Read together: the large chunk in place as alone, and the small ones in
  // place too (one iterator holds their blocks): the same chunk twice is
  // the same bytes in the mapped file, under one owner.
  const std::vector<Digest> together = {Digest::Of(small), Digest::Of(big), Digest::Of(small)};
  std::vector<absl::StatusOr<Store::SharedBytes>> batch = store->ReadSharedChunks("a/b", together);
  ASSERT_EQ(batch.size(), 3u);
  for (const auto& chunk : batch) ASSERT_OK(chunk.status());
  EXPECT_EQ(batch[0]->bytes, small);
  EXPECT_EQ(batch[1]->bytes.data(), big_read.bytes.data());
  EXPECT_EQ(batch[2]->bytes, small);
  EXPECT_EQ(batch[2]->bytes.data(), batch[0]->bytes.data());
  EXPECT_EQ(batch[2]->owner, batch[0]->owner);
  // Not a copy: another read finds the same bytes in the same place.
  std::vector<absl::StatusOr<Store::SharedBytes>> again = store->ReadSharedChunks("a/b", together);
  ASSERT_OK(again[0].status());
  EXPECT_EQ(again[0]->bytes.data(), batch[0]->bytes.data());
  EXPECT_NE(again[0]->owner, batch[0]->owner);

  ASSERT_OK(store->DeleteVersion("a/b", 1, false).status());
  ASSERT_OK_AND_ASSIGN(GcResult gc, store->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 2u);
  EXPECT_EQ(store->ReadSharedChunk("a/b", Digest::Of(big)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(big_read.bytes, big);
  EXPECT_EQ(small_read.bytes, small);
  EXPECT_EQ(batch[1]->bytes, big);
  EXPECT_EQ(batch[2]->bytes, small);
  EXPECT_EQ(store->ReadSharedChunks("a/b", together)[0].status().code(),
            absl::StatusCode::kNotFound);
}

// Commits a version of `name` whose tensors are `bytes` (one small chunk
// each); uploads them first unless `upload` is false (then they must be in
// the store already).
void CommitChunks(Store& store, const std::string& name, const std::vector<std::string>& bytes,
                  bool upload = true) {
  auto up = store.BeginUpload(name);
  ASSERT_OK(up.status());
  CommitSpec spec;
  spec.name = name;
  spec.tree.resize(1);
  spec.tree[0].kind = NodeKind::kDict;
  spec.tree[0].size = bytes.size();
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (upload) ASSERT_OK((*up)->PutChunk(Digest::Of(bytes[i]), AsBytes(bytes[i])));
    Node n;
    n.kind = NodeKind::kTensor;
    n.key = absl::StrCat("t", i);
    n.tensor.dtype = DType::kUInt8;
    n.tensor.shape = {static_cast<int64_t>(bytes[i].size())};
    n.data.size = n.data.chunk_size = bytes[i].size();
    n.data.chunks = {Digest::Of(bytes[i])};
    spec.tree.push_back(std::move(n));
  }
  Upload* ups[] = {up->get()};
  ASSERT_OK(store.Commit(std::move(spec), ups).status());
}

// `count` chunks of random bytes, 1000 + i bytes each.
std::vector<std::string> SmallChunks(int count, int seed) {
  std::vector<std::string> bytes;
  for (int i = 0; i < count; ++i) bytes.push_back(RandomBytes(1000 + i, seed + i));
  return bytes;
}

std::vector<Digest> DigestsOf(const std::vector<std::string>& bytes) {
  std::vector<Digest> digests;
  for (const std::string& b : bytes) digests.push_back(Digest::Of(b));
  return digests;
}

// Bytes of values RocksDB's MultiGet found on this thread while `read` ran:
// for a read of chunks, those of the refs entries it looked up.
uint64_t MultiGetBytesDuring(const std::function<void()>& read) {
  rocksdb::SetPerfLevel(rocksdb::PerfLevel::kEnableCount);
  rocksdb::get_perf_context()->Reset();
  read();
  const uint64_t bytes = rocksdb::get_perf_context()->multiget_read_bytes;
  rocksdb::SetPerfLevel(rocksdb::PerfLevel::kDisable);
  return bytes;
}

// Reads `bytes` back with ReadSharedChunks; checks each and that all were
// read by one iterator (not one by one: a chunk not found where it was
// looked for is read on its own). Returns the bytes of refs entries looked
// up meanwhile.
uint64_t ReadBackTogether(Store& store, const std::string& name,
                          const std::vector<std::string>& bytes) {
  const std::vector<Digest> digests = DigestsOf(bytes);
  std::vector<absl::StatusOr<Store::SharedBytes>> read;
  const uint64_t looked_up =
      MultiGetBytesDuring([&] { read = store.ReadSharedChunks(name, digests); });
  EXPECT_EQ(read.size(), bytes.size());
  for (size_t i = 0; i < read.size(); ++i) {
    EXPECT_OK(read[i].status());
    if (!read[i].ok()) continue;
    EXPECT_EQ(read[i]->bytes, bytes[i]) << "chunk " << i;
    if (read[0].ok()) EXPECT_EQ(read[i]->owner, read[0]->owner) << "chunk " << i << " read alone";
  }
  return looked_up;
}

// The iterator a batch of small chunks is read through steps over gaps and
// takes chunks asked for out of order or twice.
TEST(RocksDbSharedReadTest, ABatchOfSmallChunksIsReadByOneIteratorAcrossGaps) {
  ckpt::testing::TempDir dir;
  StoreOptions options = StoreIn(dir);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenStore(Backend::kRocksDb, options));
  const std::vector<std::string> bytes = SmallChunks(8, 60);
  CommitChunks(*store, "a/b", bytes);
  std::vector<std::string> asked;
  for (int i : {5, 0, 1, 3, 1, 7, 4}) asked.push_back(bytes[i]);
  ReadBackTogether(*store, "a/b", asked);
}

// The chunks of a version just committed (or read once) are found where the
// commit put them: a load of many small chunks makes no refs lookup each.
// After a restart they are looked up once, then found.
TEST(RocksDbSharedReadTest, SmallChunksOfARecentCommitAreReadWithoutRefsLookups) {
  ckpt::testing::TempDir dir;
  StoreOptions options = StoreIn(dir);
  const std::vector<std::string> bytes = SmallChunks(16, 7);
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenStore(Backend::kRocksDb, options));
    CommitChunks(*store, "a/b", bytes);
    EXPECT_EQ(ReadBackTogether(*store, "a/b", bytes), 0u);
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenStore(Backend::kRocksDb, options));
  EXPECT_GE(ReadBackTogether(*store, "a/b", bytes), bytes.size());  // a few bytes an entry
  EXPECT_EQ(ReadBackTogether(*store, "a/b", bytes), 0u);
  // Another namespace does not read this one's chunks by their locations;
  // its own chunks of the same bytes are its own.
  for (auto& read : store->ReadSharedChunks("c/d", DigestsOf(bytes))) {
    EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound) << read.status();
  }
  CommitChunks(*store, "c/d", bytes);
  EXPECT_EQ(ReadBackTogether(*store, "c/d", bytes), 0u);
}

// Garbage collection forgets where the chunks it drops were: a chunk whose
// version was deleted and collected is NotFound, as it was without
// locations, also while its bytes stay in a chunk file that is still mostly
// alive. The same bytes saved again are read from where the new commit put
// them.
TEST(RocksDbSharedReadTest, TheLocationOfACollectedChunkIsNotTakenForIt) {
  ckpt::testing::TempDir dir;
  StoreOptions options = StoreIn(dir);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenStore(Backend::kRocksDb, options));
  const std::vector<std::string> bytes = SmallChunks(8, 11);
  CommitChunks(*store, "a/b", bytes);  // version 1: all 8, one upload's file
  const std::vector<std::string> kept(bytes.begin(), bytes.end() - 1);
  CommitChunks(*store, "a/b", kept, /*upload=*/false);  // version 2: 7 of them
  EXPECT_EQ(ReadBackTogether(*store, "a/b", bytes), 0u);
  ASSERT_OK(store->DeleteVersion("a/b", 1, false).status());
  ASSERT_OK_AND_ASSIGN(GcResult gc, store->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 1u);
  // The file, 1/8 garbage, stays whole: the dead chunk's bytes are still in it.
  const Digest dead = Digest::Of(bytes.back());
  std::vector<absl::StatusOr<Store::SharedBytes>> read = store->ReadSharedChunks("a/b", {dead});
  ASSERT_EQ(read.size(), 1u);
  EXPECT_EQ(read[0].status().code(), absl::StatusCode::kNotFound) << read[0].status();
  EXPECT_EQ(ReadBackTogether(*store, "a/b", kept), 0u);
  CommitChunks(*store, "a/b", bytes);  // version 3: the 8th uploaded again
  EXPECT_EQ(ReadBackTogether(*store, "a/b", bytes), 0u);
}

// Reads of small chunks while versions are committed (some bytes new, some
// saved before and collected since), deleted and collected on another
// thread: every read gives the chunk's own bytes or NotFound, never another
// error (a remembered location whose chunk file gc dropped must end in
// NotFound, not DATA_LOSS; a read never returns other bytes).
TEST(RocksDbSharedReadTest, ReadsDuringCommitsDeletesAndGcGiveTheBytesOrNotFound) {
  ckpt::testing::TempDir dir;
  StoreOptions options = StoreIn(dir);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> store, OpenStore(Backend::kRocksDb, options));
  constexpr int kSets = 3, kRounds = 60;
  std::vector<std::vector<std::string>> sets;
  std::vector<std::string> all;
  for (int k = 0; k < kSets; ++k) {
    sets.push_back(SmallChunks(8, 1000 * (k + 1)));
    all.insert(all.end(), sets.back().begin(), sets.back().end());
  }
  const std::vector<Digest> digests = DigestsOf(all);
  std::atomic<bool> done{false};
  std::atomic<int> found{0};
  auto reader = [&] {
    while (!done.load()) {
      std::vector<absl::StatusOr<Store::SharedBytes>> read =
          store->ReadSharedChunks("a/b", digests);
      ASSERT_EQ(read.size(), all.size());
      for (size_t i = 0; i < all.size(); ++i) {
        if (read[i].ok()) {
          ASSERT_EQ(read[i]->bytes, all[i]) << "chunk " << i;
          found.fetch_add(1);
        } else {
          ASSERT_EQ(read[i].status().code(), absl::StatusCode::kNotFound) << read[i].status();
        }
      }
    }
  };
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) readers.emplace_back(reader);
  for (int round = 1; round <= kRounds; ++round) {
    CommitChunks(*store, "a/b", sets[round % kSets]);
    if (round > 1) ASSERT_OK(store->DeleteVersion("a/b", round - 1, false).status());
    if (round % 2 == 0) ASSERT_OK(store->CollectGarbage().status());
  }
  done.store(true);
  for (std::thread& t : readers) t.join();
  EXPECT_GT(found.load(), 0);
  // The last version reads back whole.
  EXPECT_EQ(ReadBackTogether(*store, "a/b", sets[kRounds % kSets]), 0u);
}

}  // namespace
}  // namespace ckpt::storage::test
