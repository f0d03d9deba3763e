// The `ckpt` CLI and the example program, as a user runs them, against the
// real ckpt-server process.

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "client/raw_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

using testing::CommandResult;
using testing::RunCommand;

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = testing::ServerProcess::Start(dir_.path() + "/db");
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  CommandResult Ckpt(std::vector<std::string> args) {
    args.insert(args.begin(), {testing::CliBinary(), "--server", server_->address()});
    return RunCommand(args);
  }

  void SaveTree(const std::string& name) {
    auto client = client::RawClient::Connect(server_->address(), {});
    ASSERT_TRUE(client.ok());
    testing::TreeBuilder b;
    b.Dict(3)
        .Int(5, std::string("epoch"))
        .Dict(2, std::string("model_state_dict"))
        .Tensor(std::string("hidden.weight"), DType::kFloat32, {2, 3}, 1)
        .Tensor(std::string("bn.num_batches_tracked"), DType::kInt64, {}, 2, "cuda:1")
        .Dict(1, std::string("optimizer_state_dict"))
        .Dict(1, std::string("state"))
        .Dict(1, int64_t{0})
        .Tensor(std::string("momentum_buffer"), DType::kFloat32, {2, 3}, 3);
    client::SaveOptions options;
    options.step = 42;
    ASSERT_TRUE((*client)->Save(name, b.Input(), options).ok());
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::ServerProcess> server_;
};

TEST_F(CliTest, PutGetRoundTripsAFile) {
  const std::string in = dir_.path() + "/in.bin";
  const std::string out = dir_.path() + "/out.bin";
  const std::string data = testing::RandomBytes(9 << 20, 5);  // 3 chunks
  std::ofstream(in, std::ios::binary) << data;

  CommandResult put = Ckpt({"put", "team/files/blob", in, "--tag", "best"});
  ASSERT_EQ(put.exit_code, 0) << put.err;
  EXPECT_NE(put.out.find("saved team/files/blob@1"), std::string::npos) << put.out;
  CommandResult get = Ckpt({"get", "team/files/blob@best", out});
  ASSERT_EQ(get.exit_code, 0) << get.err;
  std::ifstream f(out, std::ios::binary);
  std::string back((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(back, data);

  // Putting the same file again sends nothing.
  CommandResult again = Ckpt({"put", "team/files/blob", in});
  ASSERT_EQ(again.exit_code, 0);
  EXPECT_NE(again.out.find("saved team/files/blob@2 (9.0 MiB, sent 0 B)"), std::string::npos)
      << again.out;
}

TEST_F(CliTest, ShowListsKeysDtypesShapesSizesDevices) {
  SaveTree("team/run/model");
  CommandResult show = Ckpt({"show", "team/run/model"});
  ASSERT_EQ(show.exit_code, 0) << show.err;
  EXPECT_NE(show.out.find("version:    1"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("step:       42"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("  model_state_dict  dict (2)"), std::string::npos) << show.out;
  EXPECT_NE(show.out.find("    hidden.weight  float32 [2, 3]  24 B  cpu"), std::string::npos)
      << show.out;
  EXPECT_NE(show.out.find("    bn.num_batches_tracked  int64 []  8 B  cuda:1"), std::string::npos)
      << show.out;
  EXPECT_NE(show.out.find("  epoch  5"), std::string::npos) << show.out;

  CommandResult json = Ckpt({"show", "team/run/model@1", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  auto doc = nlohmann::json::parse(json.out);
  EXPECT_EQ(doc["version"], 1);
  EXPECT_EQ(doc["step"], 42);
  const auto& items = doc["tree"]["items"];
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[1]["key"], "model_state_dict");
  const auto& weight = items[1]["value"]["items"][0]["value"];
  EXPECT_EQ(weight["dtype"], "float32");
  EXPECT_EQ(weight["shape"], nlohmann::json::array({2, 3}));
  EXPECT_EQ(weight["bytes"], 24);
  // Optimizer state keeps its int keys as JSON numbers.
  EXPECT_EQ(items[2]["value"]["items"][0]["value"]["items"][0]["key"], 0);
}

TEST_F(CliTest, VersionsTagsRmGcStatsHealth) {
  SaveTree("team/run/model");
  SaveTree("team/run/model");
  CommandResult tag = Ckpt({"tag", "team/run/model@1", "best"});
  ASSERT_EQ(tag.exit_code, 0) << tag.err;
  CommandResult versions = Ckpt({"versions", "team/run/model"});
  ASSERT_EQ(versions.exit_code, 0);
  EXPECT_NE(versions.out.find("best"), std::string::npos) << versions.out;
  EXPECT_NE(versions.out.find("latest"), std::string::npos) << versions.out;

  CommandResult ls = Ckpt({"ls", "team/"});
  ASSERT_EQ(ls.exit_code, 0);
  EXPECT_NE(ls.out.find("team/run/model  2       2"), std::string::npos) << ls.out;

  CommandResult refused = Ckpt({"rm", "team/run/model@1"});
  EXPECT_EQ(refused.exit_code, 6);
  EXPECT_NE(refused.err.find("ckpt: FAILED_PRECONDITION:"), std::string::npos) << refused.err;
  CommandResult untag = Ckpt({"untag", "team/run/model", "best"});
  ASSERT_EQ(untag.exit_code, 0) << untag.err;
  CommandResult rm = Ckpt({"rm", "team/run/model@1"});
  ASSERT_EQ(rm.exit_code, 0) << rm.err;
  EXPECT_NE(rm.out.find("deleted team/run/model@1 (0 chunks released)"), std::string::npos)
      << rm.out;

  CommandResult gc = Ckpt({"gc", "--json"});
  ASSERT_EQ(gc.exit_code, 0) << gc.err;
  EXPECT_TRUE(nlohmann::json::parse(gc.out).contains("chunks_removed"));
  CommandResult stats = Ckpt({"stats", "--json"});
  ASSERT_EQ(stats.exit_code, 0);
  auto s = nlohmann::json::parse(stats.out);
  EXPECT_EQ(s["versions"], 1);
  EXPECT_EQ(s["checkpoints"], 1);
  CommandResult health = Ckpt({"health"});
  EXPECT_EQ(health.exit_code, 0);
  EXPECT_EQ(health.out, "SERVING\n");
}

TEST_F(CliTest, RetentionAndPrune) {
  for (int i = 0; i < 4; ++i) SaveTree("team/ret/model");
  CommandResult shown = Ckpt({"retention", "team/ret/model"});
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  EXPECT_EQ(shown.out, "retention of team/ret/model: none\n");

  CommandResult set = Ckpt({"retention", "team/ret/model", "--keep-last", "2"});
  ASSERT_EQ(set.exit_code, 0) << set.err;
  EXPECT_EQ(set.out,
            "retention of team/ret/model: keep_last=2\n"
            "applied after each save; versions it would delete now: 1, 2\n");
  CommandResult dry = Ckpt({"prune", "team/ret/model", "--dry-run"});
  ASSERT_EQ(dry.exit_code, 0) << dry.err;
  EXPECT_EQ(dry.out, "would delete team/ret/model versions: 1, 2\n");
  CommandResult prune = Ckpt({"prune", "team/ret/model"});
  ASSERT_EQ(prune.exit_code, 0) << prune.err;
  EXPECT_EQ(prune.out, "deleted team/ret/model versions: 1, 2\n");
  // The next save applies it by itself.
  SaveTree("team/ret/model");
  CommandResult versions = Ckpt({"versions", "team/ret/model", "--json"});
  ASSERT_EQ(versions.exit_code, 0);
  auto list = nlohmann::json::parse(versions.out);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0]["version"], 4);
  EXPECT_EQ(list[1]["version"], 5);

  CommandResult bad = Ckpt({"retention", "team/ret/model", "--keep-best", "1"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_EQ(bad.err,
            "ckpt: INVALID_ARGUMENT: keep_best needs a metric (a metadata key such as 'loss')\n");
  CommandResult clear = Ckpt({"retention", "team/ret/model", "--clear"});
  ASSERT_EQ(clear.exit_code, 0) << clear.err;
  EXPECT_EQ(clear.out, "retention of team/ret/model: none\n");
}

TEST_F(CliTest, ErrorsHaveCodesAndExitStatus) {
  CommandResult missing = Ckpt({"show", "no/such"});
  EXPECT_EQ(missing.exit_code, 3);
  EXPECT_EQ(missing.err, "ckpt: NOT_FOUND: checkpoint 'no/such' not found\n");
  CommandResult bad = Ckpt({"versions", "bad name"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("invalid name"), std::string::npos) << bad.err;

  // A server that is not there: UNAVAILABLE within the timeout.
  const auto start = std::chrono::steady_clock::now();
  CommandResult down =
      RunCommand({testing::CliBinary(), "--server", "127.0.0.1:1", "--timeout", "2", "ls"});
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(down.exit_code, 4);
  EXPECT_NE(down.err.find("ckpt: UNAVAILABLE: cannot reach ckpt server at 127.0.0.1:1"),
            std::string::npos)
      << down.err;
  EXPECT_LT(secs, 10);
}

TEST_F(CliTest, MetadataOnPutIsRecordedAndDrivesRetentionByMetric) {
  const std::string in = dir_.path() + "/in.bin";
  for (int i = 0; i < 3; ++i) {
    std::ofstream(in, std::ios::binary | std::ios::trunc) << "weights " << i;
    const std::string loss = i == 1 ? "0.1" : "0.5";
    CommandResult put =
        Ckpt({"put", "team/m/model", in, "--metadata", "loss=" + loss, "--metadata", "note=a=b"});
    ASSERT_EQ(put.exit_code, 0) << put.err;
  }
  CommandResult versions = Ckpt({"versions", "team/m/model", "--json"});
  ASSERT_EQ(versions.exit_code, 0) << versions.err;
  auto list = nlohmann::json::parse(versions.out);
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[1]["metadata"]["loss"], "0.1");
  EXPECT_EQ(list[1]["metadata"]["note"], "a=b");  // split at the first '='
  EXPECT_EQ(list[1]["metadata"]["source_file"], "in.bin");

  // Retention by the metric keeps version 2 (the lowest loss) and the newest;
  // the save that applies it says what it deleted.
  CommandResult set = Ckpt(
      {"retention", "team/m/model", "--keep-last", "1", "--keep-best", "1", "--metric", "loss"});
  ASSERT_EQ(set.exit_code, 0) << set.err;
  CommandResult put = Ckpt({"put", "team/m/model", in, "--metadata", "loss=0.9"});
  ASSERT_EQ(put.exit_code, 0) << put.err;
  EXPECT_EQ(put.out,
            "saved team/m/model@4 (9 B, sent 0 B)\n"
            "retention deleted team/m/model versions: 1, 3\n");
  CommandResult quiet = Ckpt({"put", "team/other", in});
  ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
  EXPECT_EQ(quiet.out, "saved team/other@1 (9 B, sent 0 B)\n");

  for (const std::string bad : {"loss", "=0.1"}) {
    CommandResult r = Ckpt({"put", "team/m/model", in, "--metadata", bad});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_EQ(r.err, "ckpt: INVALID_ARGUMENT: --metadata takes KEY=VALUE (e.g. loss=0.25), got '" +
                         bad + "'\n");
  }
  CommandResult twice = Ckpt({"put", "team/m/model", in, "--metadata", "a=1", "--metadata", "a=2"});
  EXPECT_EQ(twice.exit_code, 2);
  EXPECT_EQ(twice.err, "ckpt: INVALID_ARGUMENT: --metadata key 'a' given twice\n");
  // Nothing was saved by the refused commands.
  CommandResult after = Ckpt({"versions", "team/m/model", "--json"});
  EXPECT_EQ(nlohmann::json::parse(after.out).size(), 2u);
}

TEST_F(CliTest, RmAllDeletesEveryVersionTagsNeedForce) {
  SaveTree("team/all/model");
  SaveTree("team/all/model");
  SaveTree("team/all/model");
  ASSERT_EQ(Ckpt({"tag", "team/all/model@2", "best"}).exit_code, 0);

  CommandResult refused = Ckpt({"rm", "team/all/model", "--all"});
  EXPECT_EQ(refused.exit_code, 6);
  EXPECT_EQ(refused.err,
            "ckpt: FAILED_PRECONDITION: not deleting team/all/model: tagged versions 2 (best); "
            "nothing was deleted (--force deletes them and removes their tags)\n");
  CommandResult versions = Ckpt({"versions", "team/all/model", "--json"});
  EXPECT_EQ(nlohmann::json::parse(versions.out).size(), 3u);

  CommandResult no_at = Ckpt({"rm", "team/all/model"});
  EXPECT_EQ(no_at.exit_code, 2);
  EXPECT_EQ(no_at.err,
            "ckpt: INVALID_ARGUMENT: rm needs NAME@VERSION or NAME@TAG (or NAME --all for every "
            "version), got 'team/all/model'\n");
  CommandResult with_at = Ckpt({"rm", "team/all/model@1", "--all"});
  EXPECT_EQ(with_at.exit_code, 2);

  CommandResult rm = Ckpt({"rm", "team/all/model", "--all", "--force"});
  ASSERT_EQ(rm.exit_code, 0) << rm.err;
  EXPECT_EQ(rm.out, "deleted team/all/model versions: 1, 2, 3 (3 chunks released)\n");
  CommandResult gone = Ckpt({"versions", "team/all/model"});
  EXPECT_EQ(gone.exit_code, 3);
  CommandResult missing = Ckpt({"rm", "team/all/model", "--all"});
  EXPECT_EQ(missing.exit_code, 3);
}

TEST_F(CliTest, LsOnAnEmptyStoreSaysSo) {
  CommandResult ls = Ckpt({"ls"});
  EXPECT_EQ(ls.exit_code, 0);
  EXPECT_EQ(ls.out, "");  // scripts still read nothing
  EXPECT_EQ(ls.err, "no checkpoints on this server\n");
  CommandResult prefix = Ckpt({"ls", "team/"});
  EXPECT_EQ(prefix.exit_code, 0);
  EXPECT_EQ(prefix.err, "no checkpoints under 'team/'\n");
  CommandResult json = Ckpt({"ls", "--json"});
  EXPECT_EQ(json.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(json.out), nlohmann::json::array());
  EXPECT_EQ(json.err, "");
}

TEST_F(CliTest, GetOfATreeWithoutKeyIsAUsageError) {
  SaveTree("team/run/model");
  const std::string out = dir_.path() + "/out.bin";
  CommandResult get = Ckpt({"get", "team/run/model", out});
  EXPECT_EQ(get.exit_code, 2);
  EXPECT_EQ(get.err,
            "ckpt: INVALID_ARGUMENT: team/run/model@1 is a tree of 9 nodes, not one file: pass "
            "--key KEY for one tensor's or bytes leaf's raw bytes (`ckpt show team/run/model@1` "
            "lists the keys), or use `ckpt export`\n");
  EXPECT_FALSE(std::ifstream(out).good());
  CommandResult key =
      Ckpt({"get", "team/run/model", out, "--key", "model_state_dict/hidden.weight"});
  ASSERT_EQ(key.exit_code, 0) << key.err;
  EXPECT_EQ(key.out, "wrote " + out + " (24 B)\n");
  CommandResult no_key = Ckpt({"get", "team/run/model", out, "--key", "nope"});
  EXPECT_EQ(no_key.exit_code, 3);
}

TEST(CliServerTest, UsageShowsEachNamespaceAgainstItsQuota) {
  testing::TempDir dir;
  auto server = testing::ServerProcess::Start(dir.path() + "/db", {"--quota", "team=1MiB"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto ckpt = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {testing::CliBinary(), "--server", (*server)->address()});
    return RunCommand(args);
  };
  const std::string in = dir.path() + "/in.bin";
  std::ofstream(in, std::ios::binary) << testing::RandomBytes(262144, 7);
  ASSERT_EQ(ckpt({"put", "team/a", in}).exit_code, 0);
  ASSERT_EQ(ckpt({"put", "team/b", in}).exit_code, 0);  // deduplicated: no more bytes
  ASSERT_EQ(ckpt({"put", "zoo/c", in}).exit_code, 0);

  CommandResult one = ckpt({"usage", "team/a"});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(one.out,
            "NAMESPACE  USED       QUOTA    USE%\n"
            "team       256.0 KiB  1.0 MiB  25.0%\n");
  CommandResult all = ckpt({"usage"});
  ASSERT_EQ(all.exit_code, 0) << all.err;
  EXPECT_EQ(all.out,
            "NAMESPACE  USED       QUOTA    USE%\n"
            "team       256.0 KiB  1.0 MiB  25.0%\n"
            "zoo        256.0 KiB  none     -\n");
  CommandResult json = ckpt({"usage", "zoo", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_EQ(
      nlohmann::json::parse(json.out),
      nlohmann::json::parse(R"([{"namespace": "zoo", "used_bytes": 262144, "quota_bytes": 0}])"));
  CommandResult empty = ckpt({"usage", "nobody"});
  ASSERT_EQ(empty.exit_code, 0) << empty.err;
  EXPECT_EQ(empty.out, "NAMESPACE  USED  QUOTA  USE%\nnobody     0 B   none   -\n");
  CommandResult bad = ckpt({"usage", "bad name"});
  EXPECT_EQ(bad.exit_code, 2);
}

TEST(CliServerTest, ServerVersionExitsZero) {
  CommandResult version = RunCommand({testing::ServerBinary(), "--version"});
  EXPECT_EQ(version.exit_code, 0) << version.err;
  EXPECT_EQ(version.out.rfind("ckpt-server ", 0), 0u) << version.out;
  CommandResult cli = RunCommand({testing::CliBinary(), "--version"});
  EXPECT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_EQ(cli.out.rfind("ckpt ", 0), 0u) << cli.out;
}

TEST_F(CliTest, ExampleProgramSavesAndRestores) {
  CommandResult run = RunCommand({CKPT_EXAMPLE_BIN, server_->address()});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.out.find("saved examples/mlp version 1"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("model_state_dict/hidden.weight = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]"),
            std::string::npos)
      << run.out;
}

}  // namespace
}  // namespace ckpt
