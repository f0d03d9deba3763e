// Several stateless ckpt-server processes over one RADOS pool (a real test
// cluster): any server answers any request, commits through one are seen by
// all at once, concurrent saves of one name through different servers get
// distinct gap-free versions, a server killed mid-save loses nothing and
// leaks nothing once its lease ends, and a collection run through one server
// keeps what another server's live upload wrote. The parts of one
// multi-part save may reach different servers: the version commits when
// the last is in, whichever server has it, and every part learns the
// outcome (committed, timed out, abandoned by a cancelled rank, refused).

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <rados/librados.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
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
// A multi-part save waits this long for all its parts.
constexpr int kPartTimeoutSeconds = 4;

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
              {"--store", "rados", "--rados-conf", conf_, "--rados-data-pool",
               testing::kTestDataPool, "--rados-namespace-prefix", prefix_, "--rados-gc-grace", "0",
               "--rados-upload-lease", std::to_string(kLeaseSeconds), "--rados-timeout", "20",
               "--chunk-size-mib", "1", "--part-timeout", std::to_string(kPartTimeoutSeconds)}));
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
    options.rados.data_pool = testing::kTestDataPool;
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

  // The objects of checkpoint namespace `ns` in `pool` whose names start
  // with `prefix`.
  std::vector<std::string> Objects(const std::string& pool, const std::string& ns,
                                   const std::string& prefix) {
    if (!rados_connected_) {
      EXPECT_GE(rados_.init2("client.admin", "ceph", 0), 0);
      EXPECT_GE(rados_.conf_read_file(conf_.c_str()), 0);
      EXPECT_GE(rados_.connect(), 0);
      rados_connected_ = true;
    }
    librados::IoCtx io;
    EXPECT_GE(rados_.ioctx_create(pool.c_str(), io), 0);
    io.set_namespace(prefix_ + ns);
    std::vector<std::string> oids;
    for (auto it = io.nobjects_begin(); it != io.nobjects_end(); ++it) {
      if (absl::StartsWith(it->get_oid(), prefix)) oids.push_back(it->get_oid());
    }
    return oids;
  }

  // Every result in `results` failed with `code` and a message holding
  // `message`.
  static void ExpectAllFailed(const std::vector<absl::StatusOr<client::SaveResult>>& results,
                              absl::StatusCode code, const std::string& message) {
    for (size_t r = 0; r < results.size(); ++r) {
      EXPECT_EQ(results[r].status().code(), code) << r << ": " << results[r].status();
      EXPECT_THAT(results[r].status().message(), ::testing::HasSubstr(message)) << r;
    }
  }

  // Saves part r of a `world_size`-part save through server `server_of[r]`,
  // all at once; each part's result.
  std::vector<absl::StatusOr<client::SaveResult>> SaveParts(
      const std::string& name, const std::string& save_id,
      const std::vector<std::vector<Blob>>& parts, const std::vector<int>& server_of,
      uint32_t world_size, const std::vector<absl::Duration>& timeouts = {}) {
    std::vector<absl::StatusOr<client::SaveResult>> results(parts.size());
    std::vector<std::thread> threads;
    for (size_t r = 0; r < parts.size(); ++r) {
      threads.emplace_back([&, r] {
        client::SaveOptions options;
        options.rank = static_cast<uint32_t>(r);
        options.world_size = world_size;
        options.save_id = save_id;
        options.step = 100;
        if (r < timeouts.size()) options.timeout = timeouts[r];
        results[r] = clients_[server_of[r]]->Save(name, Input(parts[r]), options);
      });
    }
    for (auto& t : threads) t.join();
    return results;
  }

  std::string conf_;
  std::string prefix_;
  librados::Rados rados_;
  bool rados_connected_ = false;
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

TEST_F(RadosServersTest, ChunksLiveInTheErasureCodedDataPoolWhichEveryServerMustName) {
  const std::vector<Blob> model = {{"w", RandomBytes(2 << 20, 3)}};
  ASSERT_OK(clients_[0]->Save("team/ec", Input(model), {}).status());
  // Two 1 MiB chunks in the erasure-coded pool, none beside the metadata
  // (which uses omap, refused by erasure-coded pools).
  EXPECT_EQ(Objects(testing::kTestDataPool, "team", "c.").size(), 2u);
  EXPECT_EQ(Objects("ckpt", "team", "c.").size(), 0u);
  EXPECT_EQ(Objects("ckpt", "team", "h.").size(), 1u);
  EXPECT_EQ(Read(1, "team/ec", 1, "w"), model[0].bytes);
  // A server of the same store that names no data pool, or another one, is
  // refused before it serves.
  storage::StoreOptions options = StoreOptions();
  options.rados.data_pool = "";
  absl::Status refused = storage::RadosStore::Open(options).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(refused.message(), ::testing::HasSubstr("keeps its chunks in pool 'ckpt-data', not "
                                                      "'ckpt': give --rados-data-pool ckpt-data"));
  options.rados.data_pool = "no-such-pool";
  refused = storage::RadosStore::Open(options).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(refused.message(),
              ::testing::HasSubstr("RADOS data pool 'no-such-pool' does not exist"));
}

TEST_F(RadosServersTest, TheRanksOfOneSaveMayGoThroughDifferentServers) {
  // Four ranks over three servers (two at server 0), each with its own keys
  // and one tensor shared by all (deduplicated).
  const std::string shared = RandomBytes(5000, 50);
  std::vector<std::vector<Blob>> parts;
  for (int r = 0; r < 4; ++r) {
    parts.push_back({{absl::StrCat("rank", r, ".w"), RandomBytes((1 << 20) + 1000 * r, 60 + r)},
                     {absl::StrCat("rank", r, ".shared"), shared}});
  }
  const std::vector<int> server_of = {0, 1, 2, 0};
  auto results = SaveParts("dist/job", "step-100", parts, server_of, 4);
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status();
    EXPECT_EQ(results[r]->version.version, 1u) << r;
    EXPECT_EQ(results[r]->version.world_size, 4u) << r;
    EXPECT_EQ(results[r]->version.step, 100) << r;
    EXPECT_EQ(results[r]->version.num_tensors, 8u) << r;
  }
  // One version with every rank's keys, the same through every server.
  for (int s = 0; s < kServers; ++s) {
    ASSERT_OK_AND_ASSIGN(auto versions, clients_[s]->ListVersions("dist/job"));
    ASSERT_EQ(versions.size(), 1u) << s;
    for (int r = 0; r < 4; ++r) {
      EXPECT_EQ(Read(s, "dist/job", 1, absl::StrCat("rank", r, ".w")), parts[r][0].bytes);
      EXPECT_EQ(Read(s, "dist/job", 1, absl::StrCat("rank", r, ".shared")), shared);
    }
  }
  // The same save_id again is a new save (the next step), its parts through
  // other servers: only what changed is sent.
  parts[2][0].bytes = RandomBytes(1 << 20, 99);
  results = SaveParts("dist/job", "step-100", parts, {2, 2, 1, 0}, 4);
  uint64_t sent = 0;
  for (int r = 0; r < 4; ++r) {
    ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status();
    EXPECT_EQ(results[r]->version.version, 2u) << r;
    sent += results[r]->bytes_sent;
  }
  EXPECT_EQ(sent, 1u << 20);
  EXPECT_EQ(Read(1, "dist/job", 2, "rank2.w"), parts[2][0].bytes);
  EXPECT_EQ(Read(2, "dist/job", 2, "rank3.w"), parts[3][0].bytes);
  // No upload left live, no chunk unreferenced.
  ASSERT_OK_AND_ASSIGN(GcResult gc, clients_[1]->GarbageCollect());
  EXPECT_EQ(gc.chunks_removed, 0u);
  ASSERT_OK_AND_ASSIGN(auto info, clients_[0]->GetServerInfo());
  EXPECT_EQ(info.stats.active_uploads, 0u);
  EXPECT_EQ(info.stats.garbage_bytes, 0u);
  EXPECT_EQ(info.stats.chunks, 9u);  // 7 of the ranks' w, the shared one, v2's rank2.w
}

TEST_F(RadosServersTest, APartWaitingAtAKilledServerIsStillCommittedByTheLastPart) {
  const std::vector<Blob> rank0 = {{"rank0.w", RandomBytes(3 << 20, 70)}};
  const std::vector<Blob> rank1 = {{"rank1.w", RandomBytes(1000, 71)}};
  absl::Status first;
  std::thread waiting([&] {
    client::SaveOptions options;
    options.world_size = 2;
    options.save_id = "s";
    first = clients_[1]->Save("dist/killed", Input(rank0), options).status();
  });
  // Kill its server once rank 0's part is staged: the save's s.* object in
  // the pool lists rank 0.
  bool staged = false;
  for (int i = 0; i < 1000 && !staged; ++i) {
    for (const std::string& oid : Objects("ckpt", "dist", "s.")) {
      librados::IoCtx io;
      ASSERT_GE(rados_.ioctx_create("ckpt", io), 0);
      io.set_namespace(prefix_ + "dist");
      std::map<std::string, librados::bufferlist> ranks;
      bool more = false;
      staged = staged || (io.omap_get_vals2(oid, "", "r.", 10, &ranks, &more) >= 0 &&
                          ranks.count("r.0000000000") > 0);
    }
    if (!staged) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(staged);
  servers_[1]->Kill();
  waiting.join();
  EXPECT_EQ(first.code(), absl::StatusCode::kUnavailable) << first;
  client::SaveOptions options;
  options.world_size = 2;
  options.rank = 1;
  options.save_id = "s";
  ASSERT_OK_AND_ASSIGN(auto saved, clients_[2]->Save("dist/killed", Input(rank1), options));
  EXPECT_EQ(saved.version.version, 1u);
  EXPECT_EQ(Read(0, "dist/killed", 1, "rank0.w"), rank0[0].bytes);
  EXPECT_EQ(Read(2, "dist/killed", 1, "rank1.w"), rank1[0].bytes);
}

TEST_F(RadosServersTest, AMissingPartFailsTheSaveAtEveryServer) {
  std::vector<std::vector<Blob>> parts = {{{"a", RandomBytes(1000, 1)}},
                                          {{"b", RandomBytes(1000, 2)}}};
  const auto results = SaveParts("dist/missing", "s1", parts, {0, 1}, 3);
  ExpectAllFailed(results, absl::StatusCode::kDeadlineExceeded,
                  "only 2 of 3 parts of a save of 'dist/missing' arrived within 4s; nothing was "
                  "saved");
  for (int s = 0; s < kServers; ++s) {
    EXPECT_EQ(clients_[s]->ListVersions("dist/missing").status().code(),
              absl::StatusCode::kNotFound);
  }
  // The uploads are garbage once the save ended.
  ASSERT_OK_AND_ASSIGN(GcResult gc, clients_[2]->GarbageCollect());
  EXPECT_EQ(gc.chunks_removed, 2u);
}

TEST_F(RadosServersTest, ARankCancelledAtOneServerAbandonsTheSaveAtTheOthers) {
  std::vector<std::vector<Blob>> parts = {{{"a", RandomBytes(1000, 1)}},
                                          {{"b", RandomBytes(1000, 2)}}};
  // Rank 1 gives up after 1.5 s (its stream is cancelled while it waits);
  // rank 0, at another server, learns it long before the part timeout.
  const absl::Time start = absl::Now();
  const auto results =
      SaveParts("dist/cancel", "s1", parts, {0, 1}, 3, {absl::ZeroDuration(), absl::Seconds(1.5)});
  EXPECT_EQ(results[1].status().code(), absl::StatusCode::kDeadlineExceeded) << results[1].status();
  EXPECT_EQ(results[0].status().code(), absl::StatusCode::kAborted) << results[0].status();
  EXPECT_THAT(results[0].status().message(),
              ::testing::HasSubstr("rank 1 of a 3-part save of 'dist/cancel' was cancelled; the "
                                   "save is abandoned and nothing was saved"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(kPartTimeoutSeconds));
  EXPECT_EQ(clients_[2]->ListVersions("dist/cancel").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RadosServersTest, PartsThatDoNotMergeAcrossServersCommitNothing) {
  std::vector<std::vector<Blob>> parts = {{{"same.key", RandomBytes(100, 1)}},
                                          {{"same.key", RandomBytes(100, 2)}}};
  const auto results = SaveParts("dist/bad", "s", parts, {1, 2}, 2);
  ExpectAllFailed(results, absl::StatusCode::kInvalidArgument, "duplicate dict key 'same.key'");
  // A rank whose world size disagrees, and a rank sent twice, are refused
  // by whichever server gets them.
  std::vector<absl::StatusOr<client::SaveResult>> mixed(3);
  std::thread first([&] {
    client::SaveOptions options;
    options.world_size = 2;
    options.save_id = "t";
    mixed[0] = clients_[0]->Save("dist/bad", Input(parts[0]), options);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  client::SaveOptions options;
  options.world_size = 3;
  options.rank = 1;
  options.save_id = "t";
  mixed[1] = clients_[1]->Save("dist/bad", Input(parts[1]), options);
  options.world_size = 2;
  options.rank = 0;
  mixed[2] = clients_[2]->Save("dist/bad", Input(parts[1]), options);
  first.join();
  EXPECT_EQ(mixed[1].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mixed[1].status().message(),
              ::testing::HasSubstr("save 't' of 'dist/bad' has world_size 2 but rank 1 says 3"));
  EXPECT_EQ(mixed[2].status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(mixed[2].status().message(),
              ::testing::HasSubstr("rank 0 of save 't' of 'dist/bad' already sent its part"));
  EXPECT_EQ(mixed[0].status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(clients_[0]->ListVersions("dist/bad").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace ckpt
