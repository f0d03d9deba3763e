// Store conformance suite (see store_test.cc): uploads, deduplication per
// namespace, commits of several uploads, pins and garbage collection, and
// all of it at once from several threads.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "storage/store.h"
#include "tests/storage/store_test_util.h"
#include "tests/testing/status_matchers.h"

namespace ckpt::storage::test {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

TEST_P(StoreTest, IdenticalChunksAreStoredOnce) {
  ASSERT_OK_AND_ASSIGN(VersionInfo v1, Save("team/a", Model()));
  ASSERT_OK_AND_ASSIGN(StoreStats before, store_->Stats());
  EXPECT_EQ(before.chunks, 5u);
  EXPECT_EQ(before.stored_bytes, 3510u);

  // The same bytes again, and under another name of the same namespace.
  auto up = store_->BeginUpload("team/a");
  ASSERT_TRUE(up.ok());
  std::vector<Digest> digests;
  for (const Node& n : MakeTree(Model())) {
    digests.insert(digests.end(), n.data.chunks.begin(), n.data.chunks.end());
  }
  ASSERT_OK_AND_ASSIGN(std::vector<bool> missing, (*up)->FindMissing(digests));
  EXPECT_THAT(missing, ::testing::Each(false));
  EXPECT_TRUE((*up)->Has(digests[0]));
  up->reset();
  ASSERT_OK_AND_ASSIGN(VersionInfo v2, Save("team/a", Model()));
  EXPECT_EQ(v2.new_bytes, 0u);
  ASSERT_OK_AND_ASSIGN(VersionInfo other, Save("team/b", Model()));
  EXPECT_EQ(other.new_bytes, 0u);

  ASSERT_OK_AND_ASSIGN(StoreStats after, store_->Stats());
  EXPECT_EQ(after.chunks, 5u);
  EXPECT_EQ(after.stored_bytes, 3510u);
  EXPECT_EQ(after.versions, 3u);
  EXPECT_EQ(after.checkpoints, 2u);
  EXPECT_EQ(after.logical_bytes, 3 * 3510u);
  EXPECT_GT(after.disk_bytes, 0u);
  EXPECT_EQ(StoredChunks(), 5u);

  // Another namespace does not share chunks.
  ASSERT_OK_AND_ASSIGN(VersionInfo foreign, Save("other/a", Model()));
  EXPECT_EQ(foreign.new_bytes, 3510u);
  EXPECT_EQ(StoredChunks(), 10u);

  // Deleting one of three users keeps the chunks.
  ASSERT_OK_AND_ASSIGN(uint64_t freed, store_->DeleteVersion("team/a", 1, false));
  EXPECT_EQ(freed, 0u);
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 0u);
  ExpectContents("team/b", 1, Model());
}

// Chunks are deduplicated within a namespace only: another namespace
// neither finds nor reads them.
TEST_P(StoreTest, ChunksOfAnotherNamespaceAreInvisible) {
  ASSERT_OK(Save("a/b", Model()).status());
  const Digest d = MakeTree(Model())[1].data.chunks[0];
  std::string out;
  ASSERT_OK(store_->ReadChunk("a/other", d, &out));  // same namespace "a"
  EXPECT_EQ(store_->ReadChunk("z/b", d, &out).code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(auto up, store_->BeginUpload("z/b"));
  ASSERT_OK_AND_ASSIGN(std::vector<bool> missing, up->FindMissing({d}));
  EXPECT_THAT(missing, ElementsAre(true));
  EXPECT_FALSE(up->Has(d));
}

TEST_P(StoreTest, DuplicateAndUnusedChunksOfAnUploadAreDropped) {
  auto up = store_->BeginUpload("a/b");
  ASSERT_TRUE(up.ok());
  std::string extra = RandomBytes(300, 99);
  ASSERT_OK((*up)->PutChunk(Digest::Of(extra), AsBytes(extra)));
  ASSERT_OK((*up)->PutChunk(Digest::Of(extra), AsBytes(extra)));  // No-op.
  EXPECT_EQ((*up)->bytes_written(), 300u);
  ASSERT_OK_AND_ASSIGN(std::vector<bool> missing,
                       (*up)->FindMissing({Digest::Of(extra), Digest::Of("other")}));
  EXPECT_THAT(missing, ElementsAre(false, true));
  ASSERT_OK(UploadMissing(**up, Model()));
  CommitSpec spec;
  spec.name = "a/b";
  spec.tree = MakeTree(Model());
  Upload* ups[] = {up->get()};
  ASSERT_OK_AND_ASSIGN(VersionInfo info, store_->Commit(std::move(spec), ups));
  EXPECT_EQ(info.new_bytes, 3510u);
  // The unreferenced chunk is unreachable at once, and gone from disk when
  // garbage collection rewrites the upload's file.
  std::string out;
  EXPECT_EQ(store_->ReadChunk("a/b", Digest::Of(extra), &out).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(StoredChunks(), 6u);
  ASSERT_OK_AND_ASSIGN(StoreStats stats, store_->Stats());
  EXPECT_EQ(stats.chunks, 5u);
  up->reset();
  ASSERT_TRUE(store_->CollectGarbage().ok());
  EXPECT_EQ(StoredChunks(), 5u);
  ExpectContents("a/b", 1, Model());
}

TEST_P(StoreTest, SeveralUploadsCommitOneVersion) {
  // Two ranks, each writing its half, both writing one shared chunk.
  std::string shared = RandomBytes(kChunk, 7);
  std::vector<Blob> rank0 = {{"r0", RandomBytes(2000, 8)}, {"s0", shared}};
  std::vector<Blob> rank1 = {{"r1", RandomBytes(1500, 9)}, {"s1", shared}};
  auto up0 = store_->BeginUpload("a/b");
  auto up1 = store_->BeginUpload("a/b");
  ASSERT_TRUE(up0.ok() && up1.ok());
  ASSERT_OK(UploadMissing(**up0, rank0));
  ASSERT_OK(UploadMissing(**up1, rank1));
  ASSERT_OK((*up0)->Seal());
  ASSERT_OK((*up0)->Seal());  // Idempotent.
  EXPECT_EQ((*up0)->PutChunk(Digest::Of("x"), AsBytes("x")).code(),
            absl::StatusCode::kFailedPrecondition);
  std::vector<Blob> all = {rank0[0], rank0[1], rank1[0], rank1[1]};
  CommitSpec spec;
  spec.name = "a/b";
  spec.tree = MakeTree(all);
  spec.world_size = 2;
  Upload* ups[] = {up0->get(), up1->get()};
  ASSERT_OK_AND_ASSIGN(VersionInfo info, store_->Commit(std::move(spec), ups));
  EXPECT_EQ(info.new_bytes, 2000u + 1500 + kChunk);
  ExpectContents("a/b", 1, all);
  up0->reset();
  up1->reset();
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.orphan_uploads_removed, 0u);
  EXPECT_EQ(gc.chunks_removed, 0u);
  // The second copy of the shared chunk is gone.
  EXPECT_EQ(StoredChunks(), 2u + 2 + 1);
  ExpectContents("a/b", 1, all);
}

TEST_P(StoreTest, RejectsBadChunks) {
  auto up = store_->BeginUpload("a/b");
  ASSERT_TRUE(up.ok());
  std::string data = "some bytes";
  Digest wrong = Digest::Of("other bytes");
  absl::Status s = (*up)->PutChunk(wrong, AsBytes(data));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("chunk digest mismatch: declared " + wrong.Hex() +
                                                  ", computed " + Digest::Of(data).Hex()));
  std::string big(4 * kChunk + 1, 'x');
  EXPECT_EQ((*up)->PutChunk(Digest::Of(big), AsBytes(big)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE((*up)->Has(wrong));
  EXPECT_EQ((*up)->bytes_written(), 0u);
}

TEST_P(StoreTest, CommitOfNeverUploadedChunkChangesNothing) {
  std::vector<Blob> blobs = {{"w", RandomBytes(1500, 3)}};
  auto up = store_->BeginUpload("a/b");
  ASSERT_TRUE(up.ok());
  // Upload only the first chunk.
  std::string first = blobs[0].bytes.substr(0, kChunk);
  ASSERT_OK((*up)->PutChunk(Digest::Of(first), AsBytes(first)));
  CommitSpec spec;
  spec.name = "a/b";
  spec.tree = MakeTree(blobs);
  spec.tags = {"best"};
  Upload* ups[] = {up->get()};
  auto result = store_->Commit(std::move(spec), ups);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(result.status().message(), "tensor 'w': chunk " +
                                           Digest::Of(blobs[0].bytes.substr(kChunk)).Hex() +
                                           " was never uploaded");
  EXPECT_EQ(store_->GetVersion("a/b", {}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetVersion("a/b", {0, "best"}).status().code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(StoreStats stats, store_->Stats());
  EXPECT_EQ(stats.versions, 0u);
  EXPECT_EQ(stats.chunks, 0u);
  EXPECT_EQ(stats.active_uploads, 1u);
  std::string out;
  EXPECT_EQ(store_->ReadChunk("a/b", Digest::Of(first), &out).code(), absl::StatusCode::kNotFound);
  // The failed upload's chunk is reclaimed once it is gone.
  up->reset();
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.orphan_uploads_removed, 1u);
  EXPECT_EQ(gc.chunks_removed, 1u);
  EXPECT_EQ(gc.bytes_removed, kChunk);
  EXPECT_EQ(StoredChunks(), 0u);
  // The next save is version 1.
  ASSERT_OK_AND_ASSIGN(VersionInfo v, Save("a/b", blobs));
  EXPECT_EQ(v.version, 1u);
}

// Commit checks the tree: InvalidArgument for an invalid tree or metadata,
// FailedPrecondition for a chunk whose stored length is not the tree's;
// nothing is committed either way.
TEST_P(StoreTest, CommitChecksTheTreeAndMetadata) {
  const std::string bytes = RandomBytes(kChunk, 60);
  const Digest d = Digest::Of(bytes);
  ASSERT_OK_AND_ASSIGN(auto up, store_->BeginUpload("a/b"));
  ASSERT_OK(up->PutChunk(d, AsBytes(bytes)));
  Upload* ups[] = {up.get()};

  CommitSpec empty_tree;
  empty_tree.name = "a/b";
  EXPECT_EQ(store_->Commit(empty_tree, ups).status().code(), absl::StatusCode::kInvalidArgument);

  CommitSpec big_metadata;
  big_metadata.name = "a/b";
  big_metadata.tree = MakeTree({{"w", bytes}});
  big_metadata.metadata = {{"k", std::string(1 << 20, 'v')}};
  EXPECT_EQ(store_->Commit(big_metadata, ups).status().code(), absl::StatusCode::kInvalidArgument);

  // 1500 bytes in chunks of 1000: the second chunk must hold 500, and the
  // stored one holds 1000.
  CommitSpec wrong_length;
  wrong_length.name = "a/b";
  wrong_length.tree = MakeTree({{"w", bytes}});
  wrong_length.tree[1].data.size = 1500;
  wrong_length.tree[1].tensor.shape = {1500};
  wrong_length.tree[1].data.chunks = {d, d};
  auto refused = store_->Commit(wrong_length, ups);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("tensor 'w': chunk 1 (" + d.Hex() + ") has 1000 bytes, expected 500"));

  EXPECT_EQ(store_->GetVersion("a/b", {}).status().code(), absl::StatusCode::kNotFound);
  // The upload is still good for a correct tree.
  CommitSpec right;
  right.name = "a/b";
  right.tree = MakeTree({{"w", bytes}});
  ASSERT_OK_AND_ASSIGN(VersionInfo v, store_->Commit(right, ups));
  EXPECT_EQ(v.version, 1u);
}

// An upload commits only into its own namespace.
TEST_P(StoreTest, CommitRefusesAnUploadOfAnotherNamespace) {
  ASSERT_OK_AND_ASSIGN(auto up, store_->BeginUpload("a/b"));
  ASSERT_OK(UploadMissing(*up, Model()));
  CommitSpec spec;
  spec.name = "z/b";
  spec.tree = MakeTree(Model());
  Upload* ups[] = {up.get()};
  auto refused = store_->Commit(spec, ups);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->GetVersion("z/b", {}).status().code(), absl::StatusCode::kNotFound);
  // The same upload still commits where it belongs.
  spec.name = "a/c";
  ASSERT_OK_AND_ASSIGN(VersionInfo info, store_->Commit(spec, ups));
  EXPECT_EQ(info.version, 1u);
  ExpectContents("a/c", 1, Model());
}

// A commit reuses its upload's FindMissing lookups only while no refs write
// landed since; here one did (the only version holding the chunks was
// deleted, dropping their refcounts to 0), so the commit must see the new
// counts: the chunks count again, and deleting the new version releases them
// for GC exactly once.
TEST_P(StoreTest, CommitSeesRefcountChangesSinceItsLookups) {
  const std::vector<Blob> blobs = {{"w", RandomBytes(2500, 50)}};  // 3 chunks
  ASSERT_TRUE(Save("s/a", blobs).ok());
  ASSERT_OK_AND_ASSIGN(auto up, store_->BeginUpload("s/b"));
  ASSERT_OK(UploadMissing(*up, blobs));  // finds all 3 (refcount 1), uploads nothing
  EXPECT_EQ(up->bytes_written(), 0u);
  ASSERT_OK_AND_ASSIGN(uint64_t released, store_->DeleteVersion("s/a", 1, false));
  EXPECT_EQ(released, 3u);
  EXPECT_EQ(UsedBytes("s"), 0u);

  CommitSpec spec;
  spec.name = "s/b";
  spec.tree = MakeTree(blobs);
  Upload* ups[] = {up.get()};
  ASSERT_TRUE(store_->Commit(std::move(spec), ups).ok());
  up.reset();
  EXPECT_EQ(UsedBytes("s"), 2500u);
  ExpectContents("s/b", 1, blobs);

  ASSERT_OK_AND_ASSIGN(released, store_->DeleteVersion("s/b", 1, false));
  EXPECT_EQ(released, 3u);  // refcount 1 -> 0, not 2 -> 1
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 3u);
  EXPECT_EQ(UsedBytes("s"), 0u);
}

// Without refs writes in between, the lookups are reused and counts stay
// exact across saves that share every chunk.
TEST_P(StoreTest, RepeatedSavesOfTheSameChunksKeepExactCounts) {
  const std::vector<Blob> blobs = {{"w", RandomBytes(2500, 51)}};
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Save("t/a", blobs).ok());
  EXPECT_EQ(store_->NamespaceBytes("t"), 2500u);
  for (uint64_t v = 1; v <= 3; ++v) {
    ASSERT_OK_AND_ASSIGN(uint64_t released, store_->DeleteVersion("t/a", v, false));
    EXPECT_EQ(released, 0u) << v;
  }
  ASSERT_OK_AND_ASSIGN(uint64_t released, store_->DeleteVersion("t/a", 4, false));
  EXPECT_EQ(released, 3u);
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 3u);
}

TEST_P(StoreTest, PinsOfALiveUploadSurviveGarbageCollection) {
  ASSERT_TRUE(Save("a/b", Model()).ok());
  const Tree tree = MakeTree(Model());
  const Digest pinned = tree[1].data.chunks[0];

  auto up = store_->BeginUpload("a/c");  // Same namespace "a".
  ASSERT_TRUE(up.ok());
  ASSERT_OK_AND_ASSIGN(std::vector<bool> missing, (*up)->FindMissing({pinned}));
  EXPECT_THAT(missing, ElementsAre(false));
  ASSERT_OK_AND_ASSIGN(uint64_t freed, store_->DeleteVersion("a/b", 1, false));
  EXPECT_EQ(freed, 5u);
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 4u);  // All but the pinned one.
  EXPECT_EQ(StoredChunks(), 1u);

  // The pinned chunk can still be committed and read.
  Tree one(2);
  one[0].kind = NodeKind::kList;
  one[0].size = 1;
  one[1].kind = NodeKind::kBytes;
  one[1].data.size = kChunk;
  one[1].data.chunk_size = kChunk;
  one[1].data.chunks = {pinned};
  CommitSpec spec;
  spec.name = "a/c";
  spec.tree = one;
  Upload* ups[] = {up->get()};
  ASSERT_OK_AND_ASSIGN(VersionInfo info, store_->Commit(std::move(spec), ups));
  EXPECT_EQ(info.new_bytes, 0u);
  std::string out;
  ASSERT_OK(store_->ReadChunk("a/c", pinned, &out));
  EXPECT_EQ(out, Model()[0].bytes.substr(0, kChunk));

  // Once unreferenced and unpinned, it goes.
  up->reset();
  ASSERT_TRUE(store_->DeleteVersion("a/c", 1, false).ok());
  ASSERT_OK_AND_ASSIGN(gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 1u);
  EXPECT_EQ(gc.bytes_removed, kChunk);
  EXPECT_EQ(StoredChunks(), 0u);
  EXPECT_EQ(store_->ReadChunk("a/c", pinned, &out).code(), absl::StatusCode::kNotFound);
}

// Garbage collection never removes what a live, unsealed upload wrote.
TEST_P(StoreTest, GcDuringAnUploadKeepsItsChunks) {
  ASSERT_OK_AND_ASSIGN(auto up, store_->BeginUpload("a/b"));
  ASSERT_OK(UploadMissing(*up, Model()));
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 0u);
  ASSERT_OK(up->Seal());
  ASSERT_OK_AND_ASSIGN(gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 0u);
  EXPECT_EQ(gc.orphan_uploads_removed, 0u);
  CommitSpec spec;
  spec.name = "a/b";
  spec.tree = MakeTree(Model());
  Upload* ups[] = {up.get()};
  ASSERT_OK(store_->Commit(std::move(spec), ups).status());
  up.reset();
  ASSERT_OK(store_->CollectGarbage().status());
  ExpectContents("a/b", 1, Model());
  EXPECT_EQ(StoredChunks(), 5u);
}

TEST_P(StoreTest, SealedUploadDestroyedIsCollected) {
  ASSERT_TRUE(Save("a/b", Model()).ok());
  std::vector<Blob> orphan = {{"o", RandomBytes(2500, 11)}};
  {
    auto up = store_->BeginUpload("a/b");
    ASSERT_TRUE(up.ok());
    ASSERT_OK(UploadMissing(**up, orphan));
    ASSERT_OK((*up)->Seal());
    EXPECT_EQ(StoredChunks(), 5u + 3);
    // A live upload's chunks are not garbage.
    ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
    EXPECT_EQ(gc.orphan_uploads_removed, 0u);
    EXPECT_EQ(StoredChunks(), 5u + 3);
    ASSERT_OK_AND_ASSIGN(StoreStats live, store_->Stats());
    EXPECT_EQ(live.garbage_bytes, 0u);
  }
  // Dead, its chunks are garbage, never stored bytes.
  ASSERT_OK_AND_ASSIGN(StoreStats before, store_->Stats());
  EXPECT_EQ(before.garbage_bytes, 2500u);
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  ASSERT_OK_AND_ASSIGN(StoreStats after, store_->Stats());
  EXPECT_EQ(after.stored_bytes, before.stored_bytes);
  EXPECT_EQ(after.garbage_bytes, 0u);
  EXPECT_GE(gc.orphan_uploads_removed, 1u);
  EXPECT_EQ(gc.chunks_removed, 3u);
  EXPECT_EQ(gc.bytes_removed, 2500u);
  EXPECT_EQ(StoredChunks(), 5u);
  ExpectContents("a/b", 1, Model());
  ASSERT_OK_AND_ASSIGN(gc, store_->CollectGarbage());
  EXPECT_EQ(gc.orphan_uploads_removed, 0u);
}

TEST_P(StoreTest, UnsealedUploadDestroyedLeavesNothing) {
  {
    auto up = store_->BeginUpload("a/b");
    ASSERT_TRUE(up.ok());
    ASSERT_OK(UploadMissing(**up, Model()));
  }
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  // An unsealed upload never wrote into the database.
  EXPECT_EQ(gc.orphan_uploads_removed, 0u);
  EXPECT_EQ(StoredChunks(), 0u);
}

TEST_P(StoreTest, PendingUploadOfAPreviousProcessIsCollected) {
  auto up = store_->BeginUpload("a/b");
  ASSERT_TRUE(up.ok());
  ASSERT_OK(UploadMissing(**up, Model()));
  ASSERT_OK((*up)->Seal());
  up->reset();
  Reopen();
  EXPECT_EQ(StoredChunks(), 5u);
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.orphan_uploads_removed, 1u);
  EXPECT_EQ(gc.chunks_removed, 5u);
  EXPECT_EQ(StoredChunks(), 0u);
}

// An Upload may outlive its Store: it seals after the store is closed, and
// what it wrote is a dead upload's garbage for the next collection.
TEST_P(StoreTest, AnUploadMayOutliveItsStore) {
  ASSERT_OK_AND_ASSIGN(auto up, store_->BeginUpload("a/b"));
  ASSERT_OK(UploadMissing(*up, Model()));
  Close();
  ASSERT_OK(up->Seal());
  EXPECT_EQ(up->bytes_written(), 3510u);
  up.reset();
  Reopen();
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.orphan_uploads_removed, 1u);
  EXPECT_EQ(gc.chunks_removed, 5u);
  EXPECT_EQ(StoredChunks(), 0u);
}

TEST_P(StoreTest, ConcurrentSavesDeletesAndGc) {
  constexpr int kThreads = 4;
  constexpr int kSaves = 8;
  const std::string shared = RandomBytes(kChunk, 40);  // Deduplicated by all.
  std::vector<std::thread> threads;
  std::atomic<bool> failed{false};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string name = "ns/run" + std::to_string(t);
      for (int i = 0; i < kSaves; ++i) {
        std::vector<Blob> blobs = {{"shared", shared}, {"own", RandomBytes(1500, 1000 * t + i)}};
        auto v = Save(name, blobs);
        if (!v.ok() || v->version != static_cast<uint64_t>(i + 1)) {
          ADD_FAILURE() << name << ": " << v.status();
          failed = true;
          return;
        }
        // Keep only the newest version.
        if (i > 0 && !store_->DeleteVersion(name, i, false).ok()) failed = true;
      }
    });
  }
  threads.emplace_back([&] {
    for (int i = 0; i < 10; ++i) {
      if (!store_->CollectGarbage().ok()) failed = true;
    }
  });
  for (auto& th : threads) th.join();
  ASSERT_FALSE(failed);
  ASSERT_TRUE(store_->CollectGarbage().ok());
  for (int t = 0; t < kThreads; ++t) {
    ExpectContents("ns/run" + std::to_string(t), kSaves,
                   {{"shared", shared}, {"own", RandomBytes(1500, 1000 * t + kSaves - 1)}});
  }
  ASSERT_OK_AND_ASSIGN(StoreStats stats, store_->Stats());
  EXPECT_EQ(stats.versions, static_cast<uint64_t>(kThreads));
  EXPECT_EQ(stats.chunks, 1u + kThreads * 2);
  EXPECT_EQ(stats.active_uploads, 0u);
  EXPECT_EQ(StoredChunks(), 1u + kThreads * 2);
}

}  // namespace
}  // namespace ckpt::storage::test
