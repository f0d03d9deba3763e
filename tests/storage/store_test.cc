// The Store conformance suite: each behaviour storage/store.h documents,
// tested once through the Store interface, for every backend (Backend in
// store_test_util.h; a new backend passes by adding itself there and to
// the INSTANTIATE_TEST_SUITE_P at the end). Behaviours of one backend's
// own layout (files, keys, formats) are tested in its own file, e.g.
// rocksdb_store_test.cc.

#include "storage/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/status_macros.h"
#include "tests/storage/store_test_util.h"
#include "tests/testing/status_matchers.h"

namespace ckpt::storage::test {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// One store of the backend under test, in a fresh directory per test.
class StoreTest : public StoreHarness, public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { StartStore(GetParam()); }
  void TearDown() override { StopStore(); }
};

TEST_P(StoreTest, CommitThenReadBack) {
  ASSERT_OK_AND_ASSIGN(VersionInfo info, Save("team/run/model", Model()));
  EXPECT_EQ(info.name, "team/run/model");
  EXPECT_EQ(info.version, 1u);
  EXPECT_EQ(info.num_tensors, 3u);
  EXPECT_EQ(info.num_nodes, 4u);
  EXPECT_EQ(info.data_bytes, 3510u);
  EXPECT_EQ(info.new_bytes, 3510u);
  EXPECT_THAT(info.tags, ElementsAre("latest"));
  EXPECT_GT(info.create_time_ms, 1600000000000);

  ASSERT_OK_AND_ASSIGN(VersionInfo got, store_->GetVersion("team/run/model", {}));
  EXPECT_EQ(got.version, 1u);
  EXPECT_EQ(got.create_time_ms, info.create_time_ms);
  EXPECT_EQ(got.data_bytes, 3510u);
  EXPECT_THAT(got.tags, ElementsAre("latest"));
  ExpectContents("team/run/model", 1, Model());

  ASSERT_OK_AND_ASSIGN(Tree tree, store_->GetTree("team/run/model", 1));
  EXPECT_EQ(tree[1].tensor.dtype, DType::kUInt8);
  EXPECT_EQ(tree[1].tensor.shape, std::vector<int64_t>{3500});
  EXPECT_EQ(StoredChunks(), 5u);
}

TEST_P(StoreTest, CommitStoresMetadata) {
  auto up = store_->BeginUpload("a/b");
  ASSERT_TRUE(up.ok());
  ASSERT_OK(UploadMissing(**up, Model()));
  CommitSpec spec;
  spec.name = "a/b";
  spec.step = 1000;
  spec.epoch = 3;
  spec.metadata = {{"loss", "0.25"}};
  spec.world_size = 4;
  spec.tree = MakeTree(Model());
  Upload* ups[] = {up->get()};
  ASSERT_TRUE(store_->Commit(spec, ups).ok());
  ASSERT_OK_AND_ASSIGN(VersionInfo got, store_->GetVersion("a/b", {1, ""}));
  EXPECT_EQ(got.step, 1000);
  EXPECT_EQ(got.epoch, 3);
  EXPECT_EQ(got.metadata, spec.metadata);
  EXPECT_EQ(got.world_size, 4u);
  // A committed upload cannot commit again.
  spec.name = "a/c";
  EXPECT_EQ(store_->Commit(spec, ups).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(StoreTest, VersionNumbersAreNeverReused) {
  for (uint64_t v = 1; v <= 3; ++v) {
    ASSERT_OK_AND_ASSIGN(VersionInfo info, Save("a/b", {{"x", RandomBytes(100, v)}}));
    EXPECT_EQ(info.version, v);
  }
  ASSERT_OK_AND_ASSIGN(uint64_t freed, store_->DeleteVersion("a/b", 3, false));
  EXPECT_EQ(freed, 1u);
  ASSERT_OK_AND_ASSIGN(VersionInfo latest, store_->GetVersion("a/b", {}));
  EXPECT_EQ(latest.version, 2u);
  EXPECT_THAT(latest.tags, ElementsAre("latest"));

  ASSERT_OK_AND_ASSIGN(VersionInfo v4, Save("a/b", {{"x", RandomBytes(100, 4)}}));
  EXPECT_EQ(v4.version, 4u);
  // Even when every version is gone.
  for (uint64_t v : {1, 2, 4}) ASSERT_TRUE(store_->DeleteVersion("a/b", v, false).ok());
  EXPECT_EQ(store_->ListVersions("a/b").status().code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(VersionInfo v5, Save("a/b", {{"x", RandomBytes(100, 5)}}));
  EXPECT_EQ(v5.version, 5u);
  ASSERT_OK_AND_ASSIGN(auto versions, store_->ListVersions("a/b"));
  ASSERT_EQ(versions.size(), 1u);
  EXPECT_EQ(versions[0].version, 5u);
}

TEST_P(StoreTest, NotFoundMessages) {
  ASSERT_TRUE(Save("a/b", Model()).ok());
  auto missing_name = store_->GetVersion("x/y", {});
  EXPECT_EQ(missing_name.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing_name.status().message(), "checkpoint 'x/y' not found");
  EXPECT_EQ(store_->GetVersion("x/y", {3, ""}).status().message(), "checkpoint 'x/y' not found");
  auto missing_version = store_->GetVersion("a/b", {7, ""});
  EXPECT_EQ(missing_version.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing_version.status().message(), "version 7 of 'a/b' not found");
  auto missing_tag = store_->GetVersion("a/b", {0, "best"});
  EXPECT_EQ(missing_tag.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing_tag.status().message(), "tag 'best' of 'a/b' not found");
  EXPECT_EQ(store_->GetTree("a/b", 7).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DeleteVersion("a/b", 7, true).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ListVersions("x/y").status().message(), "checkpoint 'x/y' not found");
  std::string out;
  EXPECT_EQ(store_->ReadChunk("a/b", Digest::Of("nope"), &out).code(), absl::StatusCode::kNotFound);
}

TEST_P(StoreTest, InvalidNamesAndTags) {
  for (const char* bad : {"", "a//b", "../x", "a b", "/abs"}) {
    EXPECT_EQ(store_->BeginUpload(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(store_->GetVersion(bad, {}).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
  ASSERT_TRUE(Save("a/b", Model()).ok());
  EXPECT_EQ(store_->SetTag("a/b", "bad tag", 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->SetTag("a/b", "123", 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->GetVersion("a/b", {0, "no/slash"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Save("a/b", Model(), {"latest"}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(StoreTest, TagsMoveAndNeedForceToDelete) {
  ASSERT_OK_AND_ASSIGN(VersionInfo v1, Save("a/b", {{"x", RandomBytes(10, 1)}}, {"best"}));
  EXPECT_THAT(v1.tags, ElementsAre("best", "latest"));
  ASSERT_OK(store_->SetTag("a/b", "release", 1));
  ASSERT_OK_AND_ASSIGN(VersionInfo v2, Save("a/b", {{"x", RandomBytes(10, 2)}}));
  EXPECT_EQ(v2.version, 2u);

  ASSERT_OK_AND_ASSIGN(VersionInfo by_tag, store_->GetVersion("a/b", {0, "best"}));
  EXPECT_EQ(by_tag.version, 1u);
  EXPECT_THAT(by_tag.tags, ElementsAre("best", "release"));
  ASSERT_OK_AND_ASSIGN(VersionInfo latest, store_->GetVersion("a/b", {0, "latest"}));
  EXPECT_EQ(latest.version, 2u);
  EXPECT_THAT(latest.tags, ElementsAre("latest"));

  ASSERT_OK_AND_ASSIGN(auto versions, store_->ListVersions("a/b"));
  ASSERT_EQ(versions.size(), 2u);
  EXPECT_THAT(versions[0].tags, ElementsAre("best", "release"));
  EXPECT_THAT(versions[1].tags, ElementsAre("latest"));

  // "latest" is automatic; tags need an existing version.
  absl::Status s = store_->SetTag("a/b", "latest", 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "tag 'latest' is automatic (it follows the newest version) and cannot be set or "
            "removed");
  // Tags start with a letter, digit or '_': "." and ".." are never tags.
  for (const char* bad : {"..", ".", ".hidden", "-rf"}) {
    s = store_->SetTag("a/b", bad, 1);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(s.message()), HasSubstr("must start with a letter")) << bad;
  }
  EXPECT_EQ(store_->SetTag("a/b", "best", 9).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->SetTag("x/y", "best", 1).code(), absl::StatusCode::kNotFound);
  s = store_->DeleteTag("a/b", "nope");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "tag 'nope' of 'a/b' not found");

  // Moving a tag.
  ASSERT_OK(store_->SetTag("a/b", "best", 2));
  ASSERT_OK_AND_ASSIGN(by_tag, store_->GetVersion("a/b", {0, "best"}));
  EXPECT_EQ(by_tag.version, 2u);

  // Tagged versions need force.
  auto refused = store_->DeleteVersion("a/b", 1, false);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(refused.status().message(), "version 1 of 'a/b' is tagged 'release'; use force");
  ASSERT_OK(store_->DeleteTag("a/b", "release"));
  ASSERT_TRUE(store_->DeleteVersion("a/b", 1, false).ok());
  ASSERT_TRUE(store_->DeleteVersion("a/b", 2, true).ok());
  EXPECT_EQ(store_->GetVersion("a/b", {0, "best"}).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DeleteTag("a/b", "best").code(), absl::StatusCode::kNotFound);
}

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

TEST_P(StoreTest, ReopenKeepsEverything) {
  ASSERT_TRUE(Save("a/b", Model(), {"best"}).ok());
  std::vector<Blob> newer = {{"n", RandomBytes(1000, 21)}};
  ASSERT_TRUE(Save("z/z", newer).ok());
  ASSERT_TRUE(store_->DeleteVersion("z/z", 1, false).ok());
  ASSERT_TRUE(store_->CollectGarbage().ok());

  Reopen();
  ASSERT_OK_AND_ASSIGN(VersionInfo best, store_->GetVersion("a/b", {0, "best"}));
  EXPECT_EQ(best.version, 1u);
  EXPECT_THAT(best.tags, ElementsAre("best", "latest"));
  ExpectContents("a/b", 1, Model());

  std::vector<Blob> fresh = {{"f", RandomBytes(1000, 22)}};
  ASSERT_OK_AND_ASSIGN(VersionInfo v2, Save("a/b", fresh));
  EXPECT_EQ(v2.version, 2u);
  EXPECT_EQ(v2.new_bytes, 1000u);
  ExpectContents("a/b", 1, Model());
  ExpectContents("a/b", 2, fresh);

  Reopen();
  ExpectContents("a/b", 2, fresh);
  ASSERT_OK_AND_ASSIGN(auto list, store_->ListCheckpoints("", "", 0));
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "a/b");
  EXPECT_EQ(list[0].latest_version, 2u);
  EXPECT_EQ(list[0].num_versions, 2u);
}

// Retention: the policy persists, Prune deletes what it picks (never a
// tagged or the newest version), frees the chunks only those versions used,
// and a dry run deletes nothing.
TEST_P(StoreTest, RetentionPolicyPersistsAndPruneDeletesWhatItPicks) {
  ASSERT_OK_AND_ASSIGN(RetentionPolicy none, store_->GetRetention("r/model"));
  EXPECT_FALSE(none.enabled());
  RetentionPolicy policy;
  policy.keep_last = 2;
  policy.keep_every_steps = 300;
  ASSERT_OK(store_->SetRetention("r/model", policy));  // before any version
  auto save = [&](int64_t step, std::vector<std::string> tags = {}) -> absl::Status {
    auto up = store_->BeginUpload("r/model");
    if (!up.ok()) return up.status();
    std::vector<Blob> blobs = {{"w", RandomBytes(2000, static_cast<uint32_t>(step))}};
    CKPT_RETURN_IF_ERROR(UploadMissing(**up, blobs));
    CommitSpec spec;
    spec.name = "r/model";
    spec.step = step;
    spec.tags = std::move(tags);
    spec.tree = MakeTree(blobs);
    Upload* ups[] = {up->get()};
    return store_->Commit(std::move(spec), ups).status();
  };
  ASSERT_OK(save(100));
  ASSERT_OK(save(200, {"best"}));
  ASSERT_OK(save(300));
  ASSERT_OK(save(400));
  ASSERT_OK(save(500));
  ASSERT_OK(save(600));
  Reopen();
  ASSERT_OK_AND_ASSIGN(RetentionPolicy stored, store_->GetRetention("r/model"));
  EXPECT_EQ(stored, policy);
  const uint64_t bytes_before = store_->NamespaceBytes("r");
  EXPECT_EQ(bytes_before, 6 * 2000u);

  // v2 tagged, v3 step 300, v5 and v6 the last two (v6 also step 600).
  ASSERT_OK_AND_ASSIGN(auto would, store_->Prune("r/model", /*dry_run=*/true));
  EXPECT_THAT(would, ElementsAre(1, 4));
  ASSERT_OK_AND_ASSIGN(auto listed, store_->ListVersions("r/model"));
  EXPECT_EQ(listed.size(), 6u);
  ASSERT_OK_AND_ASSIGN(auto deleted, store_->Prune("r/model", false));
  EXPECT_THAT(deleted, ElementsAre(1, 4));
  ASSERT_OK_AND_ASSIGN(listed, store_->ListVersions("r/model"));
  std::vector<uint64_t> left;
  for (const VersionInfo& v : listed) left.push_back(v.version);
  EXPECT_THAT(left, ElementsAre(2, 3, 5, 6));
  EXPECT_EQ(store_->NamespaceBytes("r"), bytes_before - 2 * 2000);
  ASSERT_OK_AND_ASSIGN(auto again, store_->Prune("r/model", false));
  EXPECT_THAT(again, IsEmpty());

  // An off policy removes it; bad names and policies are refused.
  ASSERT_OK(store_->SetRetention("r/model", RetentionPolicy{}));
  ASSERT_OK_AND_ASSIGN(none, store_->GetRetention("r/model"));
  EXPECT_FALSE(none.enabled());
  RetentionPolicy bad;
  bad.keep_best = 1;
  EXPECT_EQ(store_->SetRetention("r/model", bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->SetRetention("../x", policy).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Prune("r/none", false).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(StoreTest, ListCheckpointsPagesInOrder) {
  for (const char* name : {"b/z", "a/y", "a/x", "a/x/sub", "ab/w"}) {
    ASSERT_TRUE(Save(name, {{"t", RandomBytes(10, 5)}}).ok()) << name;
  }
  ASSERT_TRUE(Save("a/x", {{"t", RandomBytes(10, 6)}}).ok());
  auto names = [](const std::vector<CheckpointSummary>& list) {
    std::vector<std::string> out;
    for (const auto& c : list) out.push_back(c.name);
    return out;
  };
  ASSERT_OK_AND_ASSIGN(auto all, store_->ListCheckpoints("", "", 0));
  EXPECT_THAT(names(all), ElementsAre("a/x", "a/x/sub", "a/y", "ab/w", "b/z"));
  EXPECT_EQ(all[0].num_versions, 2u);
  EXPECT_EQ(all[0].latest_version, 2u);
  EXPECT_GT(all[0].latest_create_time_ms, 0);
  ASSERT_OK_AND_ASSIGN(auto a, store_->ListCheckpoints("a/", "", 0));
  EXPECT_THAT(names(a), ElementsAre("a/x", "a/x/sub", "a/y"));
  ASSERT_OK_AND_ASSIGN(auto page, store_->ListCheckpoints("a/", "a/x", 1));
  EXPECT_THAT(names(page), ElementsAre("a/x/sub"));
  ASSERT_OK_AND_ASSIGN(page, store_->ListCheckpoints("", "a/x/sub", 2));
  EXPECT_THAT(names(page), ElementsAre("a/y", "ab/w"));
  ASSERT_OK_AND_ASSIGN(auto none, store_->ListCheckpoints("c/", "", 0));
  EXPECT_THAT(none, IsEmpty());
}

TEST_P(StoreTest, NamespaceBytesCountDistinctReferencedChunks) {
  EXPECT_EQ(store_->NamespaceBytes("a"), 0u);
  ASSERT_TRUE(Save("a/b", Model()).ok());
  EXPECT_EQ(store_->NamespaceBytes("a"), 3510u);
  // The same bytes under another name of the namespace cost nothing more;
  // another namespace pays for its own copy.
  ASSERT_TRUE(Save("a/c", Model()).ok());
  EXPECT_EQ(store_->NamespaceBytes("a"), 3510u);
  ASSERT_TRUE(Save("z/c", Model()).ok());
  EXPECT_EQ(store_->NamespaceBytes("z"), 3510u);
  // A new tensor adds its chunks.
  ASSERT_TRUE(Save("a/b", {{"x", RandomBytes(1500, 40)}}).ok());
  EXPECT_EQ(store_->NamespaceBytes("a"), 5010u);
  // Deleting releases only what no other version references.
  ASSERT_TRUE(store_->DeleteVersion("a/b", 1, false).ok());
  EXPECT_EQ(store_->NamespaceBytes("a"), 5010u);  // a/c@1 still uses Model()
  ASSERT_TRUE(store_->DeleteVersion("a/c", 1, false).ok());
  EXPECT_EQ(store_->NamespaceBytes("a"), 1500u);
  // Released chunks referenced again before GC count again.
  ASSERT_TRUE(Save("a/d", Model()).ok());
  EXPECT_EQ(store_->NamespaceBytes("a"), 5010u);
  // Recomputed identically when the store opens.
  Reopen();
  EXPECT_EQ(store_->NamespaceBytes("a"), 5010u);
  EXPECT_EQ(store_->NamespaceBytes("z"), 3510u);
  EXPECT_EQ(store_->NamespaceBytes("ab"), 0u);
  ASSERT_TRUE(store_->CollectGarbage().ok());
  EXPECT_EQ(store_->NamespaceBytes("a"), 5010u);
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
  EXPECT_EQ(store_->NamespaceBytes("s"), 0u);

  CommitSpec spec;
  spec.name = "s/b";
  spec.tree = MakeTree(blobs);
  Upload* ups[] = {up.get()};
  ASSERT_TRUE(store_->Commit(std::move(spec), ups).ok());
  up.reset();
  EXPECT_EQ(store_->NamespaceBytes("s"), 2500u);
  ExpectContents("s/b", 1, blobs);

  ASSERT_OK_AND_ASSIGN(released, store_->DeleteVersion("s/b", 1, false));
  EXPECT_EQ(released, 3u);  // refcount 1 -> 0, not 2 -> 1
  ASSERT_OK_AND_ASSIGN(GcResult gc, store_->CollectGarbage());
  EXPECT_EQ(gc.chunks_removed, 3u);
  EXPECT_EQ(store_->NamespaceBytes("s"), 0u);
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

TEST_P(StoreTest, QuotaRefusesTheCommitAndLeavesNothing) {
  quota_ = 5000;
  quotas_ = {{"big", 0}, {"small", 100}};
  Reopen();
  ASSERT_TRUE(Save("a/b", Model()).ok());  // 3510 of 5000
  const uint64_t chunks_before = StoredChunks();
  // 3510 + 2000 > 5000: refused, nothing visible, nothing counted.
  auto over = Save("a/b", {{"x", RandomBytes(2000, 41)}});
  ASSERT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(over.status().message(),
            "namespace 'a' quota exceeded: it holds 3510 bytes, 'a/b' would add 2000, the "
            "quota is 5000 bytes; nothing was saved");
  ASSERT_OK_AND_ASSIGN(auto versions, store_->ListVersions("a/b"));
  EXPECT_EQ(versions.size(), 1u);
  EXPECT_EQ(store_->NamespaceBytes("a"), 3510u);
  // The refused upload's chunks are garbage: GC removes every one of them.
  ASSERT_TRUE(store_->CollectGarbage().ok());
  EXPECT_EQ(StoredChunks(), chunks_before);
  ExpectContents("a/b", 1, Model());
  // Deduplicated bytes are free: the same model again fits.
  ASSERT_TRUE(Save("a/c", Model()).ok());
  // Exactly up to the quota is allowed.
  ASSERT_TRUE(Save("a/b", {{"x", RandomBytes(1490, 42)}}).ok());
  EXPECT_EQ(store_->NamespaceBytes("a"), 5000u);
  EXPECT_EQ(Save("a/b", {{"y", RandomBytes(1, 43)}}).status().code(),
            absl::StatusCode::kResourceExhausted);
  // Deleting frees room.
  ASSERT_TRUE(store_->DeleteVersion("a/b", 2, false).ok());
  ASSERT_TRUE(Save("a/b", {{"y", RandomBytes(1, 43)}}).ok());
  // Per-namespace overrides: 0 lifts the limit, others replace it.
  ASSERT_TRUE(
      Save("big/m", {{"x", RandomBytes(3 * kChunk, 44)}, {"y", RandomBytes(3 * kChunk, 45)}}).ok());
  EXPECT_EQ(Save("small/m", {{"x", RandomBytes(101, 46)}}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Save("small/m", {{"x", RandomBytes(100, 46)}}).ok());
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

// Backup: a copy taken while an upload is in flight opens as a store with
// exactly the committed versions, byte-exact, and the in-flight upload's
// chunks are garbage there; the live store goes on unaffected.
TEST_P(StoreTest, BackupIsAConsistentStoreOfTheCommittedVersions) {
  std::vector<Blob> v1 = {{"a", RandomBytes(5 * kChunk, 1)}, {"b", RandomBytes(3 * kChunk, 2)}};
  std::vector<Blob> v2 = {{"a", RandomBytes(5 * kChunk, 1)}, {"b", RandomBytes(3 * kChunk, 3)}};
  ASSERT_OK(Save("ns/m", v1, {"best"}).status());
  ASSERT_OK(Save("ns/m", v2).status());
  // An upload in flight: its chunks are written, not committed.
  std::vector<Blob> pending = {{"c", RandomBytes(4 * kChunk, 4)}};
  ASSERT_OK_AND_ASSIGN(auto up, store_->BeginUpload("ns/m"));
  ASSERT_OK(UploadMissing(*up, pending));

  const std::string backup = dir_ + "/backup-1";
  ASSERT_OK_AND_ASSIGN(BackupInfo info, store_->Backup(backup));
  EXPECT_EQ(info.path, backup);
  EXPECT_EQ(info.name, "backup-1");
  EXPECT_EQ(info.versions, 2u);
  EXPECT_GT(info.files, 0u);
  EXPECT_GT(info.bytes, 8 * kChunk);
  EXPECT_EQ(store_->Backup(backup).status().code(), absl::StatusCode::kAlreadyExists);

  // The live store commits on after the backup: not in the copy.
  CommitSpec spec;
  spec.name = "ns/m";
  spec.tree = MakeTree(pending);
  Upload* ups[] = {up.get()};
  ASSERT_OK(store_->Commit(std::move(spec), ups).status());
  up.reset();
  ASSERT_OK(Save("ns/other", v1).status());

  StoreOptions copy_options = Options();
  copy_options.path = backup;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> copy, OpenStore(GetParam(), copy_options));
  ASSERT_OK_AND_ASSIGN(auto versions, copy->ListVersions("ns/m"));
  ASSERT_EQ(versions.size(), 2u);
  EXPECT_EQ(versions[0].tags, std::vector<std::string>{"best"});
  EXPECT_EQ(copy->ListVersions("ns/other").status().code(), absl::StatusCode::kNotFound);
  store_.swap(copy);  // ExpectContents reads store_
  ExpectContents("ns/m", 1, v1);
  ExpectContents("ns/m", 2, v2);
  // Whatever the in-flight upload left in the copy is garbage: after GC
  // only the chunks of the two versions remain (a: 5, b: 3 + 3).
  ASSERT_OK(store_->CollectGarbage().status());
  EXPECT_EQ(StoredChunks(), 11u);
  ExpectContents("ns/m", 2, v2);
  ASSERT_OK_AND_ASSIGN(auto next, Save("ns/m", v1));
  EXPECT_EQ(next.version, 3u);
  store_.swap(copy);
  copy.reset();
  ExpectContents("ns/m", 3, pending);
}

// ---------------------------------------------------------------------------
// Behaviours of store.h the tests above leave out.

// Store::Open: InvalidArgument for an empty path or a zero max_chunk_bytes;
// missing parent directories are created.
TEST_P(StoreTest, OpenRefusesBadOptionsAndCreatesTheDirectory) {
  StoreOptions options = Options();
  options.path.clear();
  EXPECT_EQ(OpenStore(GetParam(), options).status().code(), absl::StatusCode::kInvalidArgument);
  options = Options();
  options.max_chunk_bytes = 0;
  EXPECT_EQ(OpenStore(GetParam(), options).status().code(), absl::StatusCode::kInvalidArgument);
  options = Options();
  options.path = dir_ + "/nested/deeper/db";
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Store> nested, OpenStore(GetParam(), options));
  ASSERT_OK_AND_ASSIGN(auto list, nested->ListCheckpoints("", "", 0));
  EXPECT_THAT(list, IsEmpty());
}

// Version numbers of a name are 1, 2, 3, ... with no gap: other names and
// refused commits take none.
TEST_P(StoreTest, VersionNumbersAreGapFreePerName) {
  ASSERT_OK_AND_ASSIGN(VersionInfo x1, Save("a/x", {{"t", RandomBytes(10, 1)}}));
  ASSERT_OK_AND_ASSIGN(VersionInfo y1, Save("a/y", {{"t", RandomBytes(10, 2)}}));
  // Refused: a chunk that was never uploaded.
  ASSERT_OK_AND_ASSIGN(auto up, store_->BeginUpload("a/x"));
  CommitSpec spec;
  spec.name = "a/x";
  spec.tree = MakeTree({{"t", RandomBytes(10, 3)}});
  Upload* ups[] = {up.get()};
  EXPECT_EQ(store_->Commit(std::move(spec), ups).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Refused: an invalid tag.
  EXPECT_EQ(Save("a/x", {{"t", RandomBytes(10, 4)}}, {"bad tag"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(VersionInfo x2, Save("a/x", {{"t", RandomBytes(10, 5)}}));
  ASSERT_OK_AND_ASSIGN(VersionInfo x3, Save("a/x", {{"t", RandomBytes(10, 6)}}));
  EXPECT_EQ(x1.version, 1u);
  EXPECT_EQ(y1.version, 1u);
  EXPECT_EQ(x2.version, 2u);
  EXPECT_EQ(x3.version, 3u);
  ASSERT_OK_AND_ASSIGN(auto versions, store_->ListVersions("a/x"));
  ASSERT_EQ(versions.size(), 3u);
  for (size_t i = 0; i < versions.size(); ++i) EXPECT_EQ(versions[i].version, i + 1);
}

// ListVersions pages: versions after `after`, oldest first, at most `limit`,
// with their tags; an empty page past the last; NotFound without versions.
TEST_P(StoreTest, ListVersionsPages) {
  for (uint32_t i = 1; i <= 5; ++i) {
    ASSERT_OK(Save("a/b", {{"t", RandomBytes(10, i)}},
                   i == 3 ? std::vector<std::string>{"best"} : std::vector<std::string>{})
                  .status());
  }
  ASSERT_OK(store_->DeleteVersion("a/b", 2, false).status());
  ASSERT_OK(store_->DeleteVersion("a/b", 4, false).status());
  auto numbers = [](const std::vector<VersionInfo>& list) {
    std::vector<uint64_t> out;
    for (const VersionInfo& v : list) out.push_back(v.version);
    return out;
  };
  ASSERT_OK_AND_ASSIGN(auto page, store_->ListVersions("a/b", 0, 2));
  EXPECT_THAT(numbers(page), ElementsAre(1, 3));
  EXPECT_THAT(page[1].tags, ElementsAre("best"));
  EXPECT_EQ(page[1].name, "a/b");
  ASSERT_OK_AND_ASSIGN(page, store_->ListVersions("a/b", 3, 2));
  EXPECT_THAT(numbers(page), ElementsAre(5));
  EXPECT_THAT(page[0].tags, ElementsAre("latest"));
  ASSERT_OK_AND_ASSIGN(page, store_->ListVersions("a/b", 1, 1));
  EXPECT_THAT(numbers(page), ElementsAre(3));
  ASSERT_OK_AND_ASSIGN(page, store_->ListVersions("a/b", 5, 10));
  EXPECT_THAT(page, IsEmpty());
  ASSERT_OK_AND_ASSIGN(page, store_->ListVersions("a/b", ~uint64_t{0}, 10));
  EXPECT_THAT(page, IsEmpty());
  EXPECT_EQ(store_->ListVersions("a/none", 0, 10).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->ListVersions("../x").status().code(), absl::StatusCode::kInvalidArgument);
}

// kMaxTagsPerName: SetTag and Commit refuse a tag past the limit
// (ResourceExhausted, nothing written); moving an existing tag is fine.
TEST_P(StoreTest, TagsPerNameAreLimited) {
  std::vector<std::string> tags;
  for (size_t i = 0; i + 1 < kMaxTagsPerName; ++i) tags.push_back("t" + std::to_string(i));
  ASSERT_OK(Save("a/b", Model(), tags).status());
  ASSERT_OK(store_->SetTag("a/b", "one_more", 1));  // the limit exactly
  ASSERT_OK(Save("a/b", {{"x", RandomBytes(10, 1)}}).status());
  absl::Status s = store_->SetTag("a/b", "too_many", 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("would have more than 1000 tags"));
  EXPECT_EQ(store_->GetVersion("a/b", {0, "too_many"}).status().code(),
            absl::StatusCode::kNotFound);
  auto refused = Save("a/b", {{"x", RandomBytes(10, 2)}}, {"too_many"});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_OK_AND_ASSIGN(VersionInfo latest, store_->GetVersion("a/b", {}));
  EXPECT_EQ(latest.version, 2u);
  // Existing tags still move, and other names have their own limit.
  ASSERT_OK(store_->SetTag("a/b", "t0", 2));
  ASSERT_OK_AND_ASSIGN(VersionInfo moved, store_->GetVersion("a/b", {0, "t0"}));
  EXPECT_EQ(moved.version, 2u);
  ASSERT_OK(Save("a/c", Model(), {"too_many"}).status());
  // Deleting frees room.
  ASSERT_OK(store_->DeleteTag("a/b", "t1"));
  ASSERT_OK(store_->SetTag("a/b", "too_many", 2));
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

// Stats of an empty store, and active_uploads following live uploads.
TEST_P(StoreTest, StatsOfAnEmptyStoreAndOfLiveUploads) {
  ASSERT_OK_AND_ASSIGN(StoreStats empty, store_->Stats());
  EXPECT_EQ(empty.checkpoints, 0u);
  EXPECT_EQ(empty.versions, 0u);
  EXPECT_EQ(empty.chunks, 0u);
  EXPECT_EQ(empty.stored_bytes, 0u);
  EXPECT_EQ(empty.logical_bytes, 0u);
  EXPECT_EQ(empty.garbage_bytes, 0u);
  EXPECT_EQ(empty.active_uploads, 0u);
  ASSERT_OK_AND_ASSIGN(auto up1, store_->BeginUpload("a/b"));
  ASSERT_OK_AND_ASSIGN(auto up2, store_->BeginUpload("c/d"));
  ASSERT_OK_AND_ASSIGN(StoreStats two, store_->Stats());
  EXPECT_EQ(two.active_uploads, 2u);
  up1.reset();
  ASSERT_OK_AND_ASSIGN(StoreStats one, store_->Stats());
  EXPECT_EQ(one.active_uploads, 1u);
}

// Backup: the parent of the target directory must exist.
TEST_P(StoreTest, BackupNeedsAnExistingParent) {
  ASSERT_OK(Save("a/b", Model()).status());
  const std::string target = dir_ + "/missing/backup";
  // An error of the file system, naming the directory.
  absl::Status refused = store_->Backup(target).status();
  EXPECT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.message()), HasSubstr(target));
  EXPECT_FALSE(fs::exists(target));
  ASSERT_OK_AND_ASSIGN(BackupInfo info, store_->Backup(dir_ + "/backup"));
  EXPECT_EQ(info.versions, 1u);
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

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::Values(Backend::kRocksDb),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return BackendName(info.param);
                         });

}  // namespace
}  // namespace ckpt::storage::test
