// Several stateless ckpt-server processes over one RADOS pool (a real test
// cluster): any server answers any request, commits through one are seen by
// all at once, concurrent saves of one name through different servers get
// distinct gap-free versions, a server killed mid-save loses nothing and
// leaks nothing once its lease ends, and a collection run through one server
// keeps what another server's live upload wrote.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/raw_client.h"
#include "storage/rados_store.h"
#include "tests/storage/store_test_util.h"
#include "tests/testing/ceph_cluster.h"
#include "tests/testing/server_process.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckpt {
namespace {

using storage::test::AsBytes;
using storage::test::Blob;
using storage::test::MakeTree;
using storage::test::RandomBytes;
using ::testing::ElementsAreArray;

constexpr int kServers = 3;
// Servers collect an upload this long after its last renewal.
constexpr int kLeaseSeconds = 3;

class RadosServersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(conf_, testing::TestCephConf());
    // This test's own RADOS namespaces in the shared test pool.
    prefix_ = absl::StrCat(::testing::UnitTest::GetInstance()->current_test_info()->name(), "-",
                           getpid(), "/");
    for (int i = 0; i < kServers; ++i) {
      ASSERT_OK_AND_ASSIGN(
          auto server,
          testing::ServerProcess::Start(
              dir_.path() + "/unused-" + std::to_string(i),
              {"--store", "rados", "--rados-conf", conf_, "--rados-namespace-prefix", prefix_,
               "--rados-gc-grace", "0", "--rados-upload-lease", std::to_string(kLeaseSeconds),
               "--rados-timeout", "20", "--chunk-size-mib", "1"}));
      ASSERT_THAT(server->Log(), ::testing::HasSubstr("data in RADOS pool ckpt"));
      servers_.push_back(std::move(server));
      ASSERT_OK_AND_ASSIGN(auto client, client::RawClient::Connect(servers_.back()->address(), {}));
      clients_.push_back(std::move(client));
    }
  }

  // Options of a store of the same deployment as the servers.
  storage::StoreOptions StoreOptions() const {
    storage::StoreOptions options;
    options.backend = storage::StoreBackend::kRados;
    options.rados.conf_file = conf_;
    options.rados.namespace_prefix = prefix_;
    options.rados.gc_grace = absl::ZeroDuration();
    options.max_chunk_bytes = 1 << 20;
    return options;
  }

  static client::SaveInput Input(const std::vector<Blob>& blobs) {
    client::SaveInput input;
    input.tree = MakeTree(blobs);
    input.bytes.resize(input.tree.size());
    for (size_t i = 0; i < blobs.size(); ++i) {
      input.tree[i + 1].data.chunks.clear();
      input.tree[i + 1].data.chunk_size = 0;
      input.bytes[i + 1] = AsBytes(blobs[i].bytes);
    }
    return input;
  }

  // The bytes of tensor `key` of `name`@`version` as server `s` loads them.
  std::string Read(int s, const std::string& name, uint64_t version, const std::string& key) {
    client::LoadOptions options;
    options.version = version;
    auto loaded = clients_[s]->Load(name, options);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (!loaded.ok()) return "";
    for (size_t i = 0; i < loaded->tree.size(); ++i) {
      if (loaded->tree[i].has_data() && std::get<std::string>(loaded->tree[i].key) == key) {
        return std::string(loaded->data[i]);
      }
    }
    ADD_FAILURE() << "no " << key;
    return "";
  }

  std::string conf_;
  std::string prefix_;
  testing::TempDir dir_;
  std::vector<std::unique_ptr<testing::ServerProcess>> servers_;
  std::vector<std::unique_ptr<client::RawClient>> clients_;
};

TEST_F(RadosServersTest, ACommitThroughOneServerIsSeenThroughEveryOne) {
  const std::vector<Blob> model = {{"w", RandomBytes(3 << 20, 1)}, {"b", RandomBytes(100, 2)}};
  client::SaveOptions options;
  options.tags = {"best"};
  ASSERT_OK_AND_ASSIGN(client::SaveResult saved,
                       clients_[0]->Save("team/run/model", Input(model), options));
  EXPECT_EQ(saved.version.version, 1u);
  for (int s = 0; s < kServers; ++s) {
    ASSERT_OK_AND_ASSIGN(auto listed, clients_[s]->ListCheckpoints("team/"));
    ASSERT_EQ(listed.size(), 1u) << s;
    EXPECT_EQ(listed[0].name, "team/run/model");
    ASSERT_OK_AND_ASSIGN(auto manifest, clients_[s]->GetManifest("team/run/model", 0, "best"));
    EXPECT_EQ(manifest.version.version, 1u);
    EXPECT_EQ(Read(s, "team/run/model", 1, "w"), model[0].bytes) << s;
    EXPECT_EQ(Read(s, "team/run/model", 1, "b"), model[1].bytes) << s;
  }
  // Deduplicated whichever server the next save goes through.
  ASSERT_OK_AND_ASSIGN(client::SaveResult again,
                       clients_[2]->Save("team/run/model", Input(model), {}));
  EXPECT_EQ(again.version.version, 2u);
  EXPECT_EQ(again.bytes_sent, 0u);
}

TEST_F(RadosServersTest, ConcurrentSavesOfOneNameThroughDifferentServersGetGapFreeVersions) {
  constexpr int kPerServer = 6;
  std::vector<std::thread> threads;
  std::vector<std::vector<uint64_t>> got(kServers);
  std::vector<absl::Status> errors(kServers);
  for (int s = 0; s < kServers; ++s) {
    threads.emplace_back([&, s] {
      for (int i = 0; i < kPerServer; ++i) {
        client::SaveOptions options;
        options.step = s * 100 + i;
        auto saved = clients_[s]->Save("team/shared",
                                       Input({{"x", RandomBytes(20000, s * 100 + i)}}), options);
        if (!saved.ok()) {
          errors[s] = saved.status();
          return;
        }
        got[s].push_back(saved->version.version);
      }
    });
  }
  for (auto& t : threads) t.join();
  std::set<uint64_t> all;
  for (int s = 0; s < kServers; ++s) {
    ASSERT_OK(errors[s]);
    all.insert(got[s].begin(), got[s].end());
  }
  std::vector<uint64_t> expected(kServers * kPerServer);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] = i + 1;
  EXPECT_THAT(std::vector<uint64_t>(all.begin(), all.end()), ElementsAreArray(expected));
  // Each version holds what its save sent, whichever server reads it.
  ASSERT_OK_AND_ASSIGN(auto versions, clients_[1]->ListVersions("team/shared"));
  ASSERT_EQ(versions.size(), expected.size());
  for (const VersionInfo& v : versions) {
    EXPECT_EQ(Read(static_cast<int>(v.version % kServers), "team/shared", v.version, "x"),
              RandomBytes(20000, static_cast<uint32_t>(v.step)))
        << v.version;
  }
}

TEST_F(RadosServersTest, AServerKilledMidSaveLosesNothingAndItsUploadIsCollectedElsewhere) {
  const std::vector<Blob> v1 = {{"w", RandomBytes(2 << 20, 7)}};
  ASSERT_OK(clients_[0]->Save("team/crash", Input(v1), {}).status());
  // A large save through server 1, stopped (then killed) once its chunks
  // are flowing: counted in the pool by a store of the same deployment.
  ASSERT_OK_AND_ASSIGN(auto observer, storage::RadosStore::Open(StoreOptions()));
  ASSERT_OK_AND_ASSIGN(const uint64_t before, observer->CountChunkObjects());
  std::vector<Blob> big;
  for (int i = 0; i < 96; ++i) big.push_back({absl::StrCat("t", i), RandomBytes(1 << 20, 100 + i)});
  std::atomic<bool> done{false};
  absl::Status result;
  std::thread saver([&] {
    result = clients_[1]->Save("team/crash", Input(big), {}).status();
    done = true;
  });
  for (;;) {
    ASSERT_OK_AND_ASSIGN(const uint64_t now, observer->CountChunkObjects());
    if (now >= before + 4 || done) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(servers_[1]->pid(), SIGSTOP);
  ASSERT_FALSE(done.load()) << "the save finished before the kill: make it larger";
  servers_[1]->Kill();
  saver.join();
  EXPECT_FALSE(result.ok());
  // Nothing visible, v1 intact, through the survivors.
  for (int s : {0, 2}) {
    ASSERT_OK_AND_ASSIGN(auto versions, clients_[s]->ListVersions("team/crash"));
    ASSERT_EQ(versions.size(), 1u);
    EXPECT_EQ(Read(s, "team/crash", 1, "w"), v1[0].bytes);
  }
  // Its upload wrote chunks; once its lease ends, gc on another server
  // reclaims them, leaving exactly v1's.
  std::this_thread::sleep_for(std::chrono::seconds(kLeaseSeconds + 1));
  ASSERT_OK_AND_ASSIGN(GcResult gc, clients_[2]->GarbageCollect());
  EXPECT_GE(gc.orphan_uploads_removed, 1u);
  EXPECT_GT(gc.chunks_removed, 0u);
  ASSERT_OK_AND_ASSIGN(auto info, clients_[0]->GetServerInfo());
  EXPECT_EQ(info.stats.garbage_bytes, 0u);
  EXPECT_EQ(info.stats.active_uploads, 0u);
  EXPECT_EQ(info.stats.chunks, 2u);  // v1: 2 MiB in 1 MiB chunks
  EXPECT_EQ(info.stats.disk_bytes, 2u << 20);
  EXPECT_EQ(Read(2, "team/crash", 1, "w"), v1[0].bytes);
  // And the name goes on at the next number.
  ASSERT_OK_AND_ASSIGN(auto next, clients_[2]->Save("team/crash", Input(v1), {}));
  EXPECT_EQ(next.version.version, 2u);
}

TEST_F(RadosServersTest, GcThroughOneServerKeepsAnotherServersLiveUpload) {
  // "Another server": a store of the same deployment in this process, with
  // an upload in flight.
  ASSERT_OK_AND_ASSIGN(auto store, storage::RadosStore::Open(StoreOptions()));
  const std::vector<Blob> blobs = {{"w", RandomBytes(3000, 9)}};
  ASSERT_OK_AND_ASSIGN(auto up, store->BeginUpload("team/live"));
  ASSERT_OK(storage::test::UploadMissing(*up, blobs));
  for (int round = 0; round < 2; ++round) {
    ASSERT_OK_AND_ASSIGN(GcResult gc, clients_[round]->GarbageCollect());
    EXPECT_EQ(gc.chunks_removed, 0u);
  }
  storage::CommitSpec spec;
  spec.name = "team/live";
  spec.tree = MakeTree(blobs);
  storage::Upload* ups[] = {up.get()};
  ASSERT_OK(store->Commit(std::move(spec), ups).status());
  up.reset();
  EXPECT_EQ(Read(2, "team/live", 1, "w"), blobs[0].bytes);
}

}  // namespace
}  // namespace ckpt
