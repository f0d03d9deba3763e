// A RADOS cluster that stops answering: RPCs fail with UNAVAILABLE naming
// the cluster after --rados-timeout (librados alone would wait forever),
// nothing half-done becomes visible, and the same server process serves
// again once the cluster answers. Freezes the OSD of a cluster of its own.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/raw_client.h"
#include "tests/storage/store_test_util.h"
#include "tests/testing/ceph_cluster.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckpt {
namespace {

using storage::test::AsBytes;
using storage::test::MakeTree;
using storage::test::RandomBytes;
using ::testing::HasSubstr;

client::SaveInput Input(const std::string& bytes) {
  client::SaveInput input;
  input.tree = MakeTree({{"w", bytes}});
  input.tree[1].data.chunks.clear();
  input.tree[1].data.chunk_size = 0;
  input.bytes.resize(2);
  input.bytes[1] = AsBytes(bytes);
  return input;
}

// Resumes the OSD however the test ends.
struct Frozen {
  pid_t pid;
  ~Frozen() { kill(pid, SIGCONT); }
};

TEST(RadosOutageTest, UnavailableWhileTheClusterIsSilentThenServesAgain) {
  testing::TempDir dir;
  const std::string cluster = dir.path() + "/ceph";
  ASSERT_OK_AND_ASSIGN(const std::string conf, testing::StartOwnCephCluster(cluster));
  struct Stop {
    std::string dir;
    ~Stop() { testing::StopCephCluster(dir); }
  } stop{cluster};
  std::ifstream pidfile(std::filesystem::path(cluster) / "run" / "osd.0.pid");
  pid_t osd = 0;
  ASSERT_TRUE(pidfile >> osd) << "no OSD pid file in " << cluster;
  ASSERT_OK_AND_ASSIGN(auto server,
                       testing::ServerProcess::Start(
                           dir.path() + "/unused",
                           {"--store", "rados", "--rados-conf", conf, "--rados-namespace-prefix",
                            absl::StrCat("outage-", getpid(), "/"), "--rados-timeout", "2"}));
  ASSERT_OK_AND_ASSIGN(auto client, client::RawClient::Connect(server->address(), {}));
  const std::string v1 = RandomBytes(100000, 1);
  ASSERT_OK(client->Save("team/m", Input(v1), {}).status());

  {
    ASSERT_EQ(kill(osd, SIGSTOP), 0);
    Frozen frozen{osd};
    const auto start = std::chrono::steady_clock::now();
    auto loaded = client->Load("team/m", {});
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kUnavailable) << loaded.status();
    EXPECT_THAT(std::string(loaded.status().message()), HasSubstr("RADOS cluster did not answer"));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
    auto saved = client->Save("team/m", Input(RandomBytes(100000, 2)), {});
    EXPECT_EQ(saved.status().code(), absl::StatusCode::kUnavailable) << saved.status();
  }
  // The cluster is back: the same process serves, and the failed save left
  // no version.
  absl::StatusOr<std::vector<VersionInfo>> versions;
  for (int i = 0; i < 60; ++i) {
    versions = client->ListVersions("team/m");
    if (versions.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  ASSERT_OK(versions.status());
  ASSERT_EQ(versions->size(), 1u);
  ASSERT_OK_AND_ASSIGN(auto loaded, client->Load("team/m", {}));
  EXPECT_EQ(std::string(loaded.data[1]), v1);
  ASSERT_OK_AND_ASSIGN(auto again, client->Save("team/m", Input(RandomBytes(100000, 3)), {}));
  EXPECT_EQ(again.version.version, 2u);
}

}  // namespace
}  // namespace ckpt
