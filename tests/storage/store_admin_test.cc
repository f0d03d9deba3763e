// Store conformance suite (see store_test.cc): retention policies and
// Prune, namespace quotas and NamespaceBytes, Stats, Backup.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "storage/store.h"
#include "tests/storage/store_test_util.h"
#include "tests/testing/status_matchers.h"

namespace ckpt::storage::test {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

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

TEST_P(StoreTest, NamespaceBytesCountDistinctReferencedChunks) {
  EXPECT_EQ(UsedBytes("a"), 0u);
  ASSERT_TRUE(Save("a/b", Model()).ok());
  EXPECT_EQ(UsedBytes("a"), 3510u);
  // The same bytes under another name of the namespace cost nothing more;
  // another namespace pays for its own copy.
  ASSERT_TRUE(Save("a/c", Model()).ok());
  EXPECT_EQ(UsedBytes("a"), 3510u);
  ASSERT_TRUE(Save("z/c", Model()).ok());
  EXPECT_EQ(UsedBytes("z"), 3510u);
  // A new tensor adds its chunks.
  ASSERT_TRUE(Save("a/b", {{"x", RandomBytes(1500, 40)}}).ok());
  EXPECT_EQ(UsedBytes("a"), 5010u);
  // Deleting releases only what no other version references.
  ASSERT_TRUE(store_->DeleteVersion("a/b", 1, false).ok());
  EXPECT_EQ(UsedBytes("a"), 5010u);  // a/c@1 still uses Model()
  ASSERT_TRUE(store_->DeleteVersion("a/c", 1, false).ok());
  EXPECT_EQ(UsedBytes("a"), 1500u);
  // Released chunks referenced again before GC count again.
  ASSERT_TRUE(Save("a/d", Model()).ok());
  EXPECT_EQ(UsedBytes("a"), 5010u);
  // Recomputed identically when the store opens.
  Reopen();
  EXPECT_EQ(UsedBytes("a"), 5010u);
  EXPECT_EQ(UsedBytes("z"), 3510u);
  EXPECT_EQ(UsedBytes("ab"), 0u);
  ASSERT_TRUE(store_->CollectGarbage().ok());
  EXPECT_EQ(UsedBytes("a"), 5010u);
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

// Backup: a copy taken while an upload is in flight opens as a store with
// exactly the committed versions, byte-exact, and the in-flight upload's
// chunks are garbage there; the live store goes on unaffected.
TEST_P(StoreTest, BackupIsAConsistentStoreOfTheCommittedVersions) {
  if (GetParam() == Backend::kRados) {
    // A RADOS pool is backed up with Ceph's own tools, not by a server.
    EXPECT_EQ(store_->Backup(dir_ + "/backup-1").status().code(),
              absl::StatusCode::kFailedPrecondition);
    return;
  }
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

// Backup: the parent of the target directory must exist.
TEST_P(StoreTest, BackupNeedsAnExistingParent) {
  if (GetParam() == Backend::kRados) {
    EXPECT_THAT(std::string(store_->Backup(dir_ + "/backup").status().message()),
                HasSubstr("rados export"));
    return;
  }
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

}  // namespace
}  // namespace ckpt::storage::test
