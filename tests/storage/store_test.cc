// The Store conformance suite: each behaviour storage/store.h documents,
// tested once through the Store interface, for every backend (Backend in
// store_test_util.h; a new backend passes by adding itself there and to
// the INSTANTIATE_TEST_SUITE_P below). The suite's cases, one binary
// (storage_store_test):
//   store_test.cc          Open, commits, versions, tags, reads, listings
//   store_chunks_test.cc   uploads, deduplication, pins, garbage collection
//   store_admin_test.cc    retention and prune, quotas and usage, stats,
//                          backup
// Behaviours of one backend's own layout (files, keys, formats) are tested
// in its own file, e.g. rocksdb_store_test.cc.

#include "storage/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "tests/storage/store_test_util.h"
#include "tests/testing/status_matchers.h"

namespace ckpt::storage::test {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Store::Open: InvalidArgument for an empty path or a zero max_chunk_bytes;
// missing parent directories are created.
TEST_P(StoreTest, OpenRefusesBadOptionsAndCreatesTheDirectory) {
  if (GetParam() == Backend::kRados) {
    // RADOS: no directory; a missing pool and a zero chunk size are refused.
    StoreOptions options = Options();
    options.max_chunk_bytes = 0;
    EXPECT_EQ(OpenStore(GetParam(), options).status().code(), absl::StatusCode::kInvalidArgument);
    ASSERT_OK_AND_ASSIGN(auto list, store_->ListCheckpoints("", "", 0));
    EXPECT_THAT(list, IsEmpty());
    return;
  }
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

// ReadSharedChunks: one result per digest, in order, each what
// ReadSharedChunk returns (the bytes; NotFound for a chunk the namespace
// lacks, also one another namespace holds); a digest asked twice is read
// twice; an invalid name fails every result.
TEST_P(StoreTest, ReadSharedChunksAnswersEachDigestInOrder) {
  ASSERT_TRUE(Save("a/b", Model()).ok());
  ASSERT_OK_AND_ASSIGN(Tree tree, store_->GetTree("a/b", 1));
  std::vector<Digest> asked;
  for (const Node& node : tree) {
    if (node.has_data())
      asked.insert(asked.end(), node.data.chunks.begin(), node.data.chunks.end());
  }
  ASSERT_EQ(asked.size(), 5u);
  const Digest missing = Digest::Of("nope");
  asked.insert(asked.begin() + 2, missing);
  asked.push_back(asked[0]);
  const std::vector<absl::StatusOr<Store::SharedBytes>> read =
      store_->ReadSharedChunks("a/b", asked);
  ASSERT_EQ(read.size(), asked.size());
  for (size_t i = 0; i < asked.size(); ++i) {
    SCOPED_TRACE(i);
    if (asked[i] == missing) {
      EXPECT_EQ(read[i].status().code(), absl::StatusCode::kNotFound);
      EXPECT_EQ(read[i].status().message(),
                store_->ReadSharedChunk("a/b", missing).status().message());
      continue;
    }
    ASSERT_OK(read[i].status());
    std::string one;
    ASSERT_OK(store_->ReadChunk("a/b", asked[i], &one));
    EXPECT_EQ(read[i]->bytes, one);
    EXPECT_EQ(Digest::Of(read[i]->bytes), asked[i]);
  }
  const auto other = store_->ReadSharedChunks("other/x", absl::MakeConstSpan(asked).first(1));
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].status().code(), absl::StatusCode::kNotFound);
  const auto invalid = store_->ReadSharedChunks("bad name", absl::MakeConstSpan(asked).first(2));
  ASSERT_EQ(invalid.size(), 2u);
  for (const auto& result : invalid) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(store_->ReadSharedChunks("a/b", {}).empty());
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

// Every backend of store_test_util.h; the StoreTest cases of
// store_chunks_test.cc and store_admin_test.cc run under this too.
INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::Values(Backend::kRocksDb, Backend::kRados),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return BackendName(info.param);
                         });

}  // namespace
}  // namespace ckpt::storage::test
