// Version diffs (the Diff RPC, RawClient::Diff, `ckpt diff`) through a real
// server: keys only in one version, dtype/shape changes, identical tensors
// found by digest without reading them, and for changed tensors the
// relative L2 change and the largest absolute difference, largest first.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "client/raw_client.h"
#include "common/tensor_diff.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kBig = 100000;  // floats: several 64 KiB chunks

struct Values {
  std::vector<float> big;    // "big": changed in v2 at a few elements
  std::vector<float> same;   // "same": identical in both
  std::vector<float> small;  // "small": changed a lot in v2
};

Values First() {
  Values v;
  v.big.resize(kBig);
  for (int64_t i = 0; i < kBig; ++i) v.big[i] = static_cast<float>(i % 10);
  v.same.assign(5000, 0.25f);
  v.small = {1, 2, 3, 4};
  return v;
}

void Fill(testing::TreeBuilder& b, size_t node, const std::vector<float>& values) {
  std::memcpy(b.mutable_data(node).data(), values.data(), values.size() * sizeof(float));
}

// v1: {big, same, small, gone: float32[3], steps: int64[2]}
testing::TreeBuilder VersionOne(const Values& v) {
  testing::TreeBuilder b;
  b.Dict(5)
      .Tensor(std::string("big"), DType::kFloat32, {kBig}, 1)
      .Tensor(std::string("same"), DType::kFloat32, {5000}, 2)
      .Tensor(std::string("small"), DType::kFloat32, {4}, 3)
      .Tensor(std::string("gone"), DType::kFloat32, {3}, 4)
      .Tensor(std::string("steps"), DType::kInt64, {2}, 5);
  Fill(b, 1, v.big);
  Fill(b, 2, v.same);
  Fill(b, 3, v.small);
  return b;
}

// v2: big and small changed, same unchanged, gone removed, steps now
// int32, new added.
testing::TreeBuilder VersionTwo(const Values& v) {
  testing::TreeBuilder b;
  b.Dict(5)
      .Tensor(std::string("big"), DType::kFloat32, {kBig}, 1)
      .Tensor(std::string("same"), DType::kFloat32, {5000}, 2)
      .Tensor(std::string("small"), DType::kFloat32, {4}, 3)
      .Tensor(std::string("steps"), DType::kInt32, {2}, 5)
      .Tensor(std::string("new"), DType::kFloat16, {8}, 6);
  std::vector<float> big = v.big;
  big[5] += 0.5f;      // one element in the first chunk
  big[kBig - 1] = 20;  // and the last one: 9 -> 20
  Fill(b, 1, big);
  Fill(b, 2, v.same);
  Fill(b, 3, {1, 2, 3, -4});
  return b;
}

class DiffTest : public testing::ServerTest {
 protected:
  void SetUp() override {
    ServerTest::SetUp();
    const Values v = First();
    testing::TreeBuilder one = VersionOne(v), two = VersionTwo(v);
    ASSERT_OK(client_->Save("a/model", one.Input(), {}).status());
    ASSERT_OK(client_->Save("a/model", two.Input(), {}).status());
  }
};

TEST_F(DiffTest, ClassifiesEveryKeyAndMeasuresTheChanges) {
  ASSERT_OK_AND_ASSIGN(VersionDiff diff, client_->Diff("a/model", 1, "", "", 2, ""));
  EXPECT_EQ(diff.a.version, 1u);
  EXPECT_EQ(diff.b.version, 2u);
  EXPECT_EQ(diff.identical, 1u);  // same
  EXPECT_EQ(diff.changed, 2u);    // big, small
  EXPECT_EQ(diff.meta_changed, 1u);
  EXPECT_EQ(diff.only_in_a, 1u);
  EXPECT_EQ(diff.only_in_b, 1u);
  EXPECT_EQ(diff.truncated, 0u);
  // Only the changed tensors' bytes were read, from both versions.
  EXPECT_EQ(diff.bytes_compared, 2 * (kBig * 4 + 16u));
  ASSERT_EQ(diff.tensors.size(), 5u);
  // small: ||[0,0,0,-8]|| / ||[1,2,3,4]|| = 8 / sqrt(30), largest first.
  EXPECT_EQ(diff.tensors[0].key, "small");
  EXPECT_EQ(diff.tensors[0].change, TensorChange::kChanged);
  EXPECT_DOUBLE_EQ(diff.tensors[0].rel_l2, 8 / std::sqrt(30.0));
  EXPECT_EQ(diff.tensors[0].max_abs_diff, 8.0);
  // big: differences 0.5 and 11 over sum of squares of i % 10.
  double sq = 0;
  for (int64_t i = 0; i < kBig; ++i) sq += (i % 10) * (i % 10);
  EXPECT_EQ(diff.tensors[1].key, "big");
  EXPECT_NEAR(diff.tensors[1].rel_l2, std::sqrt(0.25 + 121) / std::sqrt(sq), 1e-12);
  EXPECT_EQ(diff.tensors[1].max_abs_diff, 11.0);
  EXPECT_EQ(diff.tensors[1].nonfinite_pairs, 0u);
  EXPECT_EQ(diff.tensors[2].key, "steps");
  EXPECT_EQ(diff.tensors[2].change, TensorChange::kMetaChanged);
  EXPECT_EQ(diff.tensors[2].dtype_a, DType::kInt64);
  EXPECT_EQ(diff.tensors[2].dtype_b, DType::kInt32);
  EXPECT_EQ(diff.tensors[3].key, "gone");
  EXPECT_EQ(diff.tensors[3].change, TensorChange::kOnlyInA);
  EXPECT_EQ(diff.tensors[4].key, "new");
  EXPECT_EQ(diff.tensors[4].change, TensorChange::kOnlyInB);
  EXPECT_EQ(diff.tensors[4].shape_b, std::vector<int64_t>{8});

  // A version against itself: all identical, nothing read.
  ASSERT_OK_AND_ASSIGN(VersionDiff self, client_->Diff("a/model", 2, "", "", 0, "latest"));
  EXPECT_EQ(self.identical, 5u);
  EXPECT_EQ(self.bytes_compared, 0u);
  EXPECT_TRUE(self.tensors.empty());
  // Two names: chunks of another namespace are read from there.
  const Values v = First();
  testing::TreeBuilder one = VersionOne(v);
  ASSERT_OK(client_->Save("b/copy", one.Input(), {}).status());
  ASSERT_OK_AND_ASSIGN(VersionDiff names, client_->Diff("a/model", 1, "", "b/copy", 0, ""));
  EXPECT_EQ(names.identical, 5u);  // same digests: no read
  // A limit keeps the largest changes and counts the rest.
  ASSERT_OK_AND_ASSIGN(VersionDiff top, client_->Diff("a/model", 1, "", "", 2, "", 1));
  ASSERT_EQ(top.tensors.size(), 1u);
  EXPECT_EQ(top.tensors[0].key, "small");
  EXPECT_EQ(top.truncated, 4u);
}

TEST_F(DiffTest, MissingVersionsAndBadRequestsSayWhy) {
  auto missing = client_->Diff("a/model", 7, "", "", 1, "");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "version 7 of 'a/model' not found");
  EXPECT_EQ(client_->Diff("a/model", 1, "", "x/y", 0, "").status().message(),
            "checkpoint 'x/y' not found");
  EXPECT_EQ(client_->Diff("a/model", 1, "", "", 2, "", 10001).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Diff("../bad", 1, "", "", 2, "").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(DiffTest, CliPrintsTheTableAndJson) {
  const std::string cli = testing::CliBinary();
  auto text = testing::RunCommand({cli, "--server", address(), "diff", "a/model@1", "@2"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_THAT(text.out, HasSubstr("1 identical, 2 changed, 1 dtype/shape changed, 1 only in a, "
                                  "1 only in b ("));
  EXPECT_THAT(text.out,
              HasSubstr("KEY    CHANGE       REL_L2      MAX_ABS_DIFF  DTYPE/SHAPE\n"
                        "small  changed      1.46059     8             float32[4]\n"
                        "big    changed      0.00652257  11            float32[100000]\n"));
  EXPECT_THAT(text.out, HasSubstr("steps  dtype/shape  "));
  EXPECT_THAT(text.out, HasSubstr("int64[2] -> int32[2]"));
  EXPECT_THAT(text.out, HasSubstr("gone   only in a"));
  auto json = testing::RunCommand(
      {cli, "--server", address(), "diff", "--json", "a/model@1", "a/model@latest"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const nlohmann::json out = nlohmann::json::parse(json.out);
  EXPECT_EQ(out["changed"], 2);
  EXPECT_EQ(out["tensors"][0]["key"], "small");
  EXPECT_EQ(out["tensors"][0]["max_abs_diff"], 8.0);
  EXPECT_EQ(out["tensors"][4]["change"], "only in b");
  auto missing = testing::RunCommand({cli, "--server", address(), "diff", "a/model@9", "@1"});
  EXPECT_EQ(missing.exit_code, 3) << missing.out;  // NOT_FOUND
}

// Lineage: SaveOptions::parent is checked, stored, returned with the
// version, and `ckpt log` follows it across names to a deleted ancestor.
TEST_F(DiffTest, LineageIsRecordedAndFollowed) {
  testing::TreeBuilder b;
  b.Dict(1).Tensor(std::string("w"), DType::kFloat32, {4}, 9);
  client::SaveOptions options;
  options.parent = "a/model@1";
  ASSERT_OK_AND_ASSIGN(client::SaveResult warm, client_->Save("b/run", b.Input(), options));
  EXPECT_EQ(warm.version.parent, "a/model@1");
  options.parent = "b/run@1";
  ASSERT_OK(client_->Save("c/run", b.Input(), options).status());
  ASSERT_OK_AND_ASSIGN(client::LoadedValue manifest, client_->GetManifest("c/run", 1, ""));
  EXPECT_EQ(manifest.version.parent, "b/run@1");
  options.parent = "a/model@latest";
  absl::Status bad = client_->Save("c/run", b.Input(), options).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.message(),
            "parent 'a/model@latest' must be NAME@VERSION (a version number, not a tag)");

  const std::string cli = testing::CliBinary();
  auto log = testing::RunCommand({cli, "--server", address(), "log", "c/run"});
  ASSERT_EQ(log.exit_code, 0) << log.err;
  std::vector<std::string> lines = absl::StrSplit(log.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u) << log.out;
  EXPECT_THAT(lines[0], ::testing::StartsWith("c/run@1  step 0  "));
  EXPECT_THAT(lines[1], ::testing::StartsWith("b/run@1  step 0  "));
  EXPECT_THAT(lines[2], ::testing::StartsWith("a/model@1  step 0  "));
  auto show = testing::RunCommand({cli, "--server", address(), "show", "c/run"});
  EXPECT_THAT(show.out, HasSubstr("parent:     b/run@1\n"));

  ASSERT_OK(client_->DeleteVersion("a/model", 1, false).status());
  log = testing::RunCommand({cli, "--server", address(), "log", "--json", "c/run@1"});
  ASSERT_EQ(log.exit_code, 0) << log.err;
  const nlohmann::json out = nlohmann::json::parse(log.out);
  ASSERT_EQ(out["chain"].size(), 2u);
  EXPECT_EQ(out["chain"][1]["parent"], "a/model@1");
  EXPECT_EQ(out["missing_parent"], "a/model@1");
  log = testing::RunCommand({cli, "--server", address(), "log", "c/run"});
  EXPECT_THAT(log.out, HasSubstr("a/model@1  (deleted)\n"));
  EXPECT_EQ(testing::RunCommand({cli, "--server", address(), "log", "c/run@5"}).exit_code, 3);
}

}  // namespace
}  // namespace ckpt
