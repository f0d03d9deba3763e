// Per-tensor statistics and the NaN/Inf guard through a real server: the
// client core computes statistics as it hashes, the server checks and
// stores them with the version, GetManifest and Load return them, `ckpt
// show --stats` prints them; a save asking for the guard, or a name under a
// --reject-nonfinite prefix, is refused with FAILED_PRECONDITION naming the
// tensors, and nothing is committed.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "client/raw_client.h"
#include "common/tensor_stats.h"
#include "tests/testing/http.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

using ::testing::HasSubstr;

constexpr char kRefusals[] = "ckpt_nonfinite_refusals_total";
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// 100,000 float32 values i % 7 - 3 (several 64 KiB chunks): min -3, max 3,
// with `nan` NaN and `inf` +Inf put in place of the first values.
std::vector<float> Weights(int nan = 0, int inf = 0) {
  std::vector<float> w(100000);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(static_cast<int>(i % 7) - 3);
  for (int i = 0; i < nan; ++i) w[i] = kNaN;
  for (int i = 0; i < inf; ++i) w[nan + i] = kInf;
  return w;
}

// {"model": {"w": float32[100000], "steps": int64[3]}, "note": bytes}
testing::TreeBuilder Model(const std::vector<float>& w) {
  testing::TreeBuilder b;
  b.Dict(2)
      .Dict(2, std::string("model"))
      .Tensor(std::string("w"), DType::kFloat32, {static_cast<int64_t>(w.size())}, 1)
      .Tensor(std::string("steps"), DType::kInt64, {3}, 2)
      .Bytes(std::string("note"), "hello");
  std::memcpy(b.mutable_data(2).data(), w.data(), w.size() * sizeof(float));
  const int64_t steps[] = {-5, 10, 40};
  std::memcpy(b.mutable_data(3).data(), steps, sizeof steps);
  return b;
}

class StatsTest : public testing::ServerTest {
 protected:
  void AdjustOptions(server::ServerOptions& options) override {
    options.reject_nonfinite = {"guarded/"};
  }
  absl::StatusOr<client::SaveResult> Save(const std::string& name, const std::vector<float>& w,
                                          client::SaveOptions options = {}) {
    testing::TreeBuilder b = Model(w);
    return client_->Save(name, b.Input(), options);
  }
  double Refusals() { return testing::MetricValue(server_->ScrapeMetrics(), kRefusals); }
};

TEST_F(StatsTest, StatisticsAreStoredAndReturned) {
  ASSERT_OK(Save("a/model", Weights()).status());
  ASSERT_OK_AND_ASSIGN(client::LoadedValue manifest, client_->GetManifest("a/model", 0, ""));
  ASSERT_EQ(manifest.tree.size(), 5u);
  const Node& w = manifest.tree[2];
  ASSERT_TRUE(w.tensor.stats.has_value());
  const TensorStats& s = *w.tensor.stats;
  EXPECT_EQ(s.count, 100000u);
  EXPECT_EQ(s.min, -3.0);
  EXPECT_EQ(s.max, 3.0);
  // 100000 = 7 * 14285 + 5: one more of -3..1 each than of 2 and 3.
  const double mean = -5.0 / 100000;
  EXPECT_NEAR(s.mean, mean, 1e-12);
  double sq = 0;
  for (float v : Weights()) sq += double{v} * v;
  EXPECT_NEAR(s.l2, std::sqrt(sq), 1e-9 * std::sqrt(sq));
  EXPECT_NEAR(s.std, std::sqrt(sq / 100000 - mean * mean), 1e-9);
  EXPECT_EQ(s.nonfinite(), 0u);
  const Node& steps = manifest.tree[3];
  ASSERT_TRUE(steps.tensor.stats.has_value());
  EXPECT_EQ(steps.tensor.stats->min, -5.0);
  EXPECT_EQ(steps.tensor.stats->max, 40.0);
  EXPECT_FALSE(manifest.tree[4].tensor.stats.has_value());  // a byte leaf

  // Load returns them too, and they persist across a restart.
  RestartServer();
  ASSERT_OK_AND_ASSIGN(client::LoadedValue loaded, client_->Load("a/model", {}));
  ASSERT_TRUE(loaded.tree[2].tensor.stats.has_value());
  EXPECT_TRUE(*loaded.tree[2].tensor.stats == s);

  // Without statistics (an older client): stored without.
  client::SaveOptions none;
  none.tensor_stats = false;
  ASSERT_OK(Save("a/plain", Weights(), none).status());
  ASSERT_OK_AND_ASSIGN(manifest, client_->GetManifest("a/plain", 0, ""));
  EXPECT_FALSE(manifest.tree[2].tensor.stats.has_value());
}

// A client keeps the statistics of its last save of a name: a tensor whose
// chunks all hash as before keeps them unread, a tensor changed in any chunk
// gets them afresh. Either way they equal what a new client computes.
TEST_F(StatsTest, IncrementalSavesKeepTheStatisticsOfUnchangedTensorsOnly) {
  auto fresh_stats = [&](const std::vector<float>& w, int step) -> std::vector<TensorStats> {
    auto fresh = client::RawClient::Connect(address(), {});
    EXPECT_TRUE(fresh.ok());
    testing::TreeBuilder b = Model(w);
    const std::string name = "a/fresh-" + std::to_string(step);
    EXPECT_TRUE((*fresh)->Save(name, b.Input(), {}).ok());
    auto manifest = (*fresh)->GetManifest(name, 0, "");
    EXPECT_TRUE(manifest.ok());
    return {*manifest->tree[2].tensor.stats, *manifest->tree[3].tensor.stats};
  };
  std::vector<float> w = Weights();
  std::vector<std::vector<float>> steps = {w};
  w.back() = 100;  // the last chunk changes
  steps.push_back(w);
  w.front() = -100;  // the first one too
  steps.push_back(w);
  steps.push_back(w);  // nothing changes
  for (size_t i = 0; i < steps.size(); ++i) {
    SCOPED_TRACE(i);
    ASSERT_OK_AND_ASSIGN(client::SaveResult saved, Save("a/inc", steps[i]));
    ASSERT_OK_AND_ASSIGN(client::LoadedValue manifest,
                         client_->GetManifest("a/inc", saved.version.version, ""));
    const std::vector<TensorStats> want = fresh_stats(steps[i], static_cast<int>(i));
    ASSERT_TRUE(manifest.tree[2].tensor.stats.has_value());
    EXPECT_TRUE(*manifest.tree[2].tensor.stats == want[0]);
    EXPECT_TRUE(*manifest.tree[3].tensor.stats == want[1]);
    EXPECT_EQ(manifest.tree[2].tensor.stats->max, i == 0 ? 3.0 : 100.0);
    EXPECT_EQ(manifest.tree[2].tensor.stats->min, i < 2 ? -3.0 : -100.0);
  }
}

TEST_F(StatsTest, TheSaveOptionRefusesNonFiniteValuesAndCommitsNothing) {
  client::SaveOptions guard;
  guard.reject_nonfinite = true;
  absl::Status refused = Save("a/nan", Weights(2, 1), guard).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_EQ(refused.message(),
            "refusing 'a/nan': 1 tensor holds NaN or infinite values: 'model/w' (2 NaN, 1 +Inf "
            "of 100000) (the save asked to reject non-finite values); nothing was saved");
  EXPECT_EQ(client_->ListVersions("a/nan").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Refusals(), 1);

  // Finite values pass the guard.
  ASSERT_OK(Save("a/nan", Weights(), guard).status());
  // Without the guard the NaN version commits, and its statistics say so.
  ASSERT_OK_AND_ASSIGN(client::SaveResult saved, Save("a/nan", Weights(2, 1)));
  EXPECT_EQ(saved.version.version, 2u);
  ASSERT_OK_AND_ASSIGN(client::LoadedValue manifest, client_->GetManifest("a/nan", 2, ""));
  const TensorStats& s = *manifest.tree[2].tensor.stats;
  EXPECT_EQ(s.nan, 2u);
  EXPECT_EQ(s.pos_inf, 1u);
  EXPECT_EQ(s.neg_inf, 0u);
  EXPECT_EQ(s.min, -3.0);  // over the finite values
  EXPECT_EQ(s.max, 3.0);
  EXPECT_EQ(Refusals(), 1);

  // The guard cannot vouch for float tensors without statistics.
  client::SaveOptions blind = guard;
  blind.tensor_stats = false;
  refused = Save("a/blind", Weights(), blind).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.message()),
              HasSubstr("1 float tensor without statistics (e.g. 'model/w')"));
}

TEST_F(StatsTest, AServerPrefixRefusesWhateverTheClientAsks) {
  absl::Status refused = Save("guarded/run", Weights(0, 4)).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(std::string(refused.message()),
              HasSubstr("'model/w' (4 +Inf of 100000) (this server rejects non-finite values "
                        "under 'guarded/')"));
  EXPECT_EQ(client_->ListVersions("guarded/run").status().code(), absl::StatusCode::kNotFound);
  ASSERT_OK(Save("guarded/run", Weights()).status());
  ASSERT_OK(Save("other/run", Weights(1, 0)).status());  // not under the prefix
  EXPECT_EQ(Refusals(), 1);
}

TEST_F(StatsTest, StatisticsThatCannotBeTrueAreInvalid) {
  testing::TreeBuilder b = Model(Weights());
  client::SaveInput input = b.Input();
  // A writer may send its own statistics (e.g. computed on the GPU)...
  TensorStats given = ComputeStats(DType::kFloat32, b.data(2));
  input.tree[2].tensor.stats = given;
  ASSERT_OK(client_->Save("a/given", input, {}).status());
  // ... but they must fit the tensor.
  input.tree[2].tensor.stats->count = 5;
  absl::Status bad = client_->Save("a/given", input, {}).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.message(), "tensor 'w': statistics count 5 but the tensor has 100000 elements");
  input.tree[2].tensor.stats = given;
  input.tree[2].tensor.stats->min = 4;
  EXPECT_EQ(client_->Save("a/given", input, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  input.tree[3].tensor.stats = given;  // NaN counts on an int64 tensor
  input.tree[3].tensor.stats->count = 3;
  input.tree[3].tensor.stats->nan = 1;
  input.tree[2].tensor.stats = given;
  EXPECT_EQ(client_->Save("a/given", input, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(auto versions, client_->ListVersions("a/given"));
  EXPECT_EQ(versions.size(), 1u);
}

TEST_F(StatsTest, ShowStatsPrintsEveryTensorAndMarksNonFiniteOnes) {
  ASSERT_OK(Save("a/nan", Weights(3, 0)).status());
  const std::string cli = testing::CliBinary();
  auto shown = testing::RunCommand({cli, "--server", address(), "show", "--stats", "a/nan"});
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  EXPECT_THAT(shown.out, HasSubstr("KEY          DTYPE    SHAPE     MIN  MAX  MEAN"));
  EXPECT_THAT(shown.out, HasSubstr("model/w      float32  [100000]  -3   3"));
  EXPECT_THAT(shown.out, HasSubstr("  3    0     0     NON-FINITE\n"));
  EXPECT_THAT(shown.out, HasSubstr("model/steps  int64    [3]       -5   40   15"));
  auto json = testing::RunCommand({cli, "--server", address(), "show", "--json", "a/nan"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const nlohmann::json tree = nlohmann::json::parse(json.out)["tree"];
  const nlohmann::json& w = tree["items"][0]["value"]["items"][0];
  EXPECT_EQ(w["key"], "w");
  const nlohmann::json stats = w["value"]["stats"];
  EXPECT_EQ(stats["nan"], 3);
  EXPECT_EQ(stats["count"], 100000);
  EXPECT_EQ(stats["max"], 3.0);
}

// ckpt-server's --reject-nonfinite (repeatable, comma-separated) and the
// CLI's import --reject-nonfinite, as an operator and a user run them.
TEST(StatsProcessTest, ServerFlagAndImportOption) {
  testing::TempDir dir;
  // A .safetensors file: w = [1, NaN, -4], b = [0.5].
  const std::string header = R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})";
  const float values[] = {1.0f, kNaN, -4.0f, 0.5f};
  std::string file(8, '\0');
  const uint64_t header_size = header.size();
  std::memcpy(file.data(), &header_size, 8);
  file += header;
  file.append(reinterpret_cast<const char*>(values), sizeof values);
  const std::string path = dir.path() + "/nan.safetensors";
  std::ofstream(path, std::ios::binary) << file;

  auto server =
      testing::ServerProcess::Start(dir.path() + "/db", {"--reject-nonfinite", "team/,prod/"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string cli = testing::CliBinary();
  auto import = [&](const std::string& name, bool guard) {
    std::vector<std::string> argv = {cli, "--server", (*server)->address(), "import", path, name};
    if (guard) argv.push_back("--reject-nonfinite");
    return testing::RunCommand(argv);
  };
  for (const char* name : {"team/m", "prod/m"}) {
    auto refused = import(name, false);
    EXPECT_EQ(refused.exit_code, 6) << refused.out;  // FAILED_PRECONDITION
    EXPECT_THAT(refused.err, HasSubstr("'w' (1 NaN of 3)"));
    EXPECT_THAT(refused.err, HasSubstr("under '"));
  }
  auto guarded = import("lab/m", true);
  EXPECT_EQ(guarded.exit_code, 6);
  EXPECT_THAT(guarded.err, HasSubstr("(the save asked to reject non-finite values)"));
  auto plain = import("lab/m", false);
  EXPECT_EQ(plain.exit_code, 0) << plain.err;
  auto scrape = testing::HttpGet((*server)->metrics_port(), "/metrics");
  ASSERT_TRUE(scrape.ok()) << scrape.status();
  EXPECT_EQ(testing::MetricValue(*scrape, kRefusals), 3);
}

}  // namespace
}  // namespace ckpt
