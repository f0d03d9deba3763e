// Crash safety of the real ckpt-server process: SIGKILL at 20+ points across
// a large save (before the first chunk, mid-stream, around the ingest of the
// chunk files, around the commit batch, right after the acknowledgement),
// restart on the same data directory, and check that
//   - no partial version is ever visible,
//   - every acknowledged version loads byte-identical,
//   - gc then leaves exactly the chunks committed versions reference.

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/raw_client.h"
#include "rocksdb/db.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

constexpr int kTensors = 12;
constexpr int64_t kElements = 1 << 20;  // 4 MiB each: 48 MiB per save

// The checkpoint saved in scenario `seed`: distinct bytes per seed, except one
// frozen tensor shared by all (exercises dedup across crashes).
testing::TreeBuilder Checkpoint(uint64_t seed) {
  testing::TreeBuilder b;
  b.Dict(kTensors + 1);
  b.Tensor(std::string("frozen.weight"), DType::kFloat32, {kElements}, 999);
  for (int i = 0; i < kTensors; ++i) {
    b.Tensor(absl::StrCat("layer", i, ".weight"), DType::kFloat32, {kElements}, seed * 1000 + i);
  }
  return b;
}

// Chunk keys physically present in the store's chunks column family.
uint64_t CountChunkKeys(const std::string& db_path) {
  std::vector<std::string> families;
  EXPECT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), db_path, &families).ok());
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const auto& f : families) descriptors.emplace_back(f, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s =
      rocksdb::DB::OpenForReadOnly(rocksdb::DBOptions(), db_path, descriptors, &handles, &db);
  EXPECT_TRUE(s.ok()) << s.ToString();
  if (!s.ok()) return 0;
  uint64_t count = 0;
  for (size_t i = 0; i < families.size(); ++i) {
    if (families[i] != "chunks") continue;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), handles[i]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) ++count;
  }
  for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
  delete db;
  return count;
}

struct Scenario {
  std::string crash_at;    // CKPT_TEST_CRASH_AT, or empty for an external kill
  int kill_after_ms = -1;  // external SIGKILL this long after the save starts
  bool kill_after_ack = false;
};

class CrashTest : public ::testing::Test {
 protected:
  std::string db() const { return dir_.path() + "/db"; }

  // The test build of the server: crash points are compiled into it only.
  std::unique_ptr<testing::ServerProcess> StartServer(const std::string& crash_at) {
    std::vector<std::string> flags = {"--chunk-size-mib", "1"};
    if (!crash_at.empty()) setenv("CKPT_TEST_CRASH_AT", crash_at.c_str(), 1);
    setenv("CKPT_SERVER_BIN", CKPT_CRASHTEST_SERVER_BIN, 1);
    auto server = testing::ServerProcess::Start(db(), flags);
    unsetenv("CKPT_SERVER_BIN");
    unsetenv("CKPT_TEST_CRASH_AT");
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }

  testing::TempDir dir_;
};

// The ckpt-server users run has no crash points: armed, it saves as usual.
TEST_F(CrashTest, ReleaseServerHasNoCrashPoints) {
  for (const char* point : {"save.begin:1", "save.chunk:1", "commit.before_write:1"}) {
    SCOPED_TRACE(point);
    setenv("CKPT_TEST_CRASH_AT", point, 1);
    auto server = testing::ServerProcess::Start(db(), {"--chunk-size-mib", "1"});
    unsetenv("CKPT_TEST_CRASH_AT");
    ASSERT_TRUE(server.ok()) << server.status();
    auto client = client::RawClient::Connect((*server)->address(), {});
    ASSERT_TRUE(client.ok()) << client.status();
    auto result = (*client)->Save("release/model", Checkpoint(1).Input(), {});
    EXPECT_TRUE(result.ok()) << result.status();
    EXPECT_EQ((*server)->Terminate(), 0);
  }
}

TEST_F(CrashTest, KilledServerNeverExposesPartialVersionsNorLosesCommittedOnes) {
  std::vector<Scenario> scenarios = {
      {"save.begin:1"},
      {"save.chunk:1"},
      {"save.chunk:7"},
      {"save.chunk:20"},
      {"save.chunk:40"},
      {"upload.before_ingest:1"},
      {"upload.after_ingest:1"},
      {"commit.before_write:1"},
      {"commit.after_write:1"},
      {"", -1, true},
      {"", 0},
      {"", 5},
      {"", 15},
      {"", 30},
      {"", 60},
      {"", 90},
      {"", 120},
      {"", 200},
      {"save.chunk:13"},
      {"commit.after_write:1"},
      {"", -1, true},
      {"upload.after_ingest:1"},
      {"save.chunk:30"},
  };
  ASSERT_GE(scenarios.size(), 20u);

  // seed -> version for every acknowledged save.
  std::map<uint64_t, uint64_t> acknowledged;
  int kills = 0;
  for (size_t i = 0; i < scenarios.size(); ++i) {
    const Scenario& sc = scenarios[i];
    const uint64_t seed = i + 1;
    SCOPED_TRACE(absl::StrCat("scenario ", i, " crash_at='", sc.crash_at,
                              "' kill_after_ms=", sc.kill_after_ms));
    auto server = StartServer(sc.crash_at);
    ASSERT_TRUE(server);
    client::ClientOptions copts;
    copts.connect_timeout = absl::Seconds(10);
    auto client = client::RawClient::Connect(server->address(), copts);
    ASSERT_TRUE(client.ok()) << client.status();

    testing::TreeBuilder b = Checkpoint(seed);
    client::SaveOptions options;
    options.metadata = {{"seed", absl::StrCat(seed)}};
    options.timeout = absl::Seconds(60);
    std::thread killer;
    if (sc.kill_after_ms >= 0) {
      pid_t pid = server->pid();
      killer = std::thread([pid, ms = sc.kill_after_ms] {
        usleep(ms * 1000);
        kill(pid, SIGKILL);
      });
    }
    auto result = (*client)->Save("crash/model", b.Input(), options);
    if (killer.joinable()) killer.join();
    if (result.ok()) {
      acknowledged[seed] = result->version.version;
      if (sc.kill_after_ack) kill(server->pid(), SIGKILL);
    } else {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
    }
    if (!sc.crash_at.empty() && sc.crash_at.rfind("commit.after_write", 0) != 0) {
      // Every armed point before the commit write must have fired.
      EXPECT_FALSE(result.ok()) << "crash point did not fire";
    }
    client->reset();
    server->Kill();  // reaps the process, whether or not it already died
    ++kills;

    // Restart and check every visible version.
    server = StartServer("");
    ASSERT_TRUE(server);
    client = client::RawClient::Connect(server->address(), copts);
    ASSERT_TRUE(client.ok());
    auto versions = (*client)->ListVersions("crash/model");
    std::map<uint64_t, uint64_t> visible;  // version -> seed
    if (versions.ok()) {
      for (const VersionInfo& v : *versions) {
        uint64_t s = 0;
        ASSERT_TRUE(absl::SimpleAtoi(v.metadata.at("seed"), &s));
        visible[v.version] = s;
      }
    } else {
      EXPECT_EQ(versions.status().code(), absl::StatusCode::kNotFound);
    }
    for (const auto& [s, v] : acknowledged) {
      ASSERT_TRUE(visible.count(v)) << "acknowledged version " << v << " lost";
      EXPECT_EQ(visible[v], s);
    }
    // Versions are numbered without gaps from 1.
    uint64_t expect = 1;
    for (const auto& [v, s] : visible) EXPECT_EQ(v, expect++);
    // The newest visible version (acknowledged or committed just before the
    // kill) loads byte-identical.
    if (!visible.empty()) {
      const auto& [v, s] = *visible.rbegin();
      client::LoadOptions lo;
      lo.version = v;
      auto loaded = (*client)->Load("crash/model", lo);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      testing::TreeBuilder want = Checkpoint(s);
      ASSERT_EQ(loaded->tree.size(), want.tree().size());
      for (size_t n = 0; n < want.tree().size(); ++n) {
        ASSERT_EQ(loaded->data[n], want.data(n)) << "version " << v << " node " << n;
      }
      acknowledged[s] = v;  // committed: from now on it must never disappear
    }
    client->reset();
    EXPECT_EQ(server->Terminate(), 0);
  }
  EXPECT_GE(kills, 20);
  EXPECT_GE(acknowledged.size(), 3u);

  // Every committed version still loads; gc reclaims every orphan chunk.
  auto server = StartServer("");
  ASSERT_TRUE(server);
  auto client = client::RawClient::Connect(server->address(), {});
  ASSERT_TRUE(client.ok());
  for (const auto& [s, v] : acknowledged) {
    client::LoadOptions lo;
    lo.version = v;
    auto loaded = (*client)->Load("crash/model", lo);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    testing::TreeBuilder want = Checkpoint(s);
    for (size_t n = 0; n < want.tree().size(); ++n) {
      ASSERT_EQ(loaded->data[n], want.data(n)) << "version " << v << " node " << n;
    }
  }
  auto gc = (*client)->GarbageCollect();
  ASSERT_TRUE(gc.ok()) << gc.status();
  EXPECT_GT(gc->orphan_uploads_removed, 0u);
  auto info = (*client)->GetServerInfo();
  ASSERT_TRUE(info.ok());
  const uint64_t referenced = info->stats.chunks;
  // 48 chunks of 1 MiB per distinct save + the shared frozen tensor's 4.
  EXPECT_EQ(referenced, acknowledged.size() * 48 + 4);
  client->reset();
  server->Terminate();
  EXPECT_EQ(CountChunkKeys(db()), referenced);
}

// SIGKILL in the middle of a garbage collection (after its first batch of
// deletes, and between its phases): no chunk a version references is ever
// lost, and the next collection finishes the job.
TEST_F(CrashTest, KilledGcLosesNoReferencedChunkAndTheNextGcFinishes) {
  // 20,000 tensors of 64 bytes; `shared_with_keep` of them the kept
  // version's own bytes (deduplicated), the rest distinct.
  constexpr int kSmall = 20000;
  auto small = [](uint64_t seed, int shared_with_keep) {
    testing::TreeBuilder b;
    b.Dict(kSmall);
    for (int i = 0; i < kSmall; ++i) {
      b.Tensor(absl::StrCat("layers.", i, ".weight"), DType::kFloat32, {16},
               i < shared_with_keep ? uint64_t{7000000} + i : seed * 100000 + i);
    }
    return b;
  };
  const testing::TreeBuilder keep = small(0, kSmall);
  {
    auto server = StartServer("");
    ASSERT_TRUE(server);
    auto client = client::RawClient::Connect(server->address(), {});
    ASSERT_TRUE(client.ok());
    ASSERT_TRUE((*client)->Save("gc/keep", keep.Input(), {}).ok());
    // 4 versions of which 2,000 tensors each are the kept version's: 72,000
    // dead references once they are deleted, ~1.7 MB of deletes (two
    // batches).
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      auto saved = (*client)->Save("gc/dead", small(seed, 2000).Input(), {});
      ASSERT_TRUE(saved.ok()) << saved.status();
      ASSERT_TRUE((*client)->DeleteVersion("gc/dead", saved->version.version, false).ok());
    }
    client->reset();
    server->Terminate();
  }
  auto expect_keep_loads = [&](client::RawClient& client) {
    auto loaded = client.Load("gc/keep", {});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ASSERT_EQ(loaded->data.size(), keep.tree().size());
    for (size_t n = 0; n < keep.tree().size(); ++n) {
      ASSERT_EQ(loaded->data[n], keep.data(n)) << "node " << n;
    }
  };
  uint64_t garbage = 0;  // before the first gc: every dead chunk
  for (const char* point : {"gc.after_batch:1", "gc.before_reclaim:1"}) {
    SCOPED_TRACE(point);
    auto server = StartServer(point);
    ASSERT_TRUE(server);
    auto client = client::RawClient::Connect(server->address(), {});
    ASSERT_TRUE(client.ok());
    if (garbage == 0) {
      auto info = (*client)->GetServerInfo();
      ASSERT_TRUE(info.ok());
      garbage = info->stats.garbage_bytes;
      EXPECT_EQ(garbage, uint64_t{72000} * 64);
    }
    EXPECT_FALSE((*client)->GarbageCollect().ok()) << "the crash point was not reached";
    client->reset();
    server.reset();
    server = StartServer("");
    ASSERT_TRUE(server);
    client = client::RawClient::Connect(server->address(), {});
    ASSERT_TRUE(client.ok());
    expect_keep_loads(**client);
    auto info = (*client)->GetServerInfo();
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->stats.chunks, uint64_t{kSmall});
    if (std::string(point) == "gc.after_batch:1") {
      // Cut short after its first batch: part of the dead references
      // deleted, the rest left for the next collection.
      EXPECT_GT(info->stats.garbage_bytes, 0u);
      EXPECT_LT(info->stats.garbage_bytes, garbage);
    }
    client->reset();
    server->Terminate();
  }
  auto server = StartServer("");
  ASSERT_TRUE(server);
  auto client = client::RawClient::Connect(server->address(), {});
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->GarbageCollect().ok());
  expect_keep_loads(**client);
  auto again = (*client)->GarbageCollect();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->chunks_removed, 0u);
  auto info = (*client)->GetServerInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->stats.chunks, uint64_t{kSmall});
  client->reset();
  server->Terminate();
  EXPECT_EQ(CountChunkKeys(db()), uint64_t{kSmall});
}

}  // namespace
}  // namespace ckpt

namespace ckpt {
namespace {

// SIGTERM while a save streams: with a grace period the save finishes and is
// committed; without one it is aborted and leaves nothing visible. Either
// way the server exits 0.
class SigtermTest : public ::testing::TestWithParam<int> {};

TEST_P(SigtermTest, DrainsOrAbortsCleanly) {
  const int grace = GetParam();
  testing::TempDir dir;
  auto server = testing::ServerProcess::Start(
      dir.path() + "/db", {"--shutdown-grace", std::to_string(grace), "--chunk-size-mib", "1"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = client::RawClient::Connect((*server)->address(), {});
  ASSERT_TRUE(client.ok());
  // A save in small batches; SIGTERM once its first batch is through (the
  // progress hook), i.e. mid-stream.
  testing::TreeBuilder b = Checkpoint(1);
  std::atomic<bool> streaming{false};
  std::atomic<bool> finished{false};
  absl::StatusOr<client::SaveResult> result;
  std::thread saver([&] {
    client::ClientOptions copts;
    copts.batch_bytes = 1 << 20;
    auto c = client::RawClient::Connect((*server)->address(), copts);
    ASSERT_TRUE(c.ok());
    client::SaveOptions options;
    options.progress = [&](uint64_t done, uint64_t) {
      if (done > 0) streaming = true;
    };
    result = (*c)->Save("term/model", b.Input(), options);
    finished = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!streaming.load() && !finished.load() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  ASSERT_TRUE(streaming.load()) << "the save never got going";
  EXPECT_EQ((*server)->Terminate(), 0);
  saver.join();
  if (grace > 0) {
    ASSERT_TRUE(result.ok()) << result.status();
  }
  auto restarted = testing::ServerProcess::Start(dir.path() + "/db");
  ASSERT_TRUE(restarted.ok());
  auto c = client::RawClient::Connect((*restarted)->address(), {});
  ASSERT_TRUE(c.ok());
  auto versions = (*c)->ListVersions("term/model");
  if (result.ok()) {
    ASSERT_TRUE(versions.ok());
    auto loaded = (*c)->Load("term/model", {});
    ASSERT_TRUE(loaded.ok());
    for (size_t n = 0; n < b.tree().size(); ++n) EXPECT_EQ(loaded->data[n], b.data(n));
  } else if (versions.ok()) {
    // Cancelled after the commit was already under way: the client heard
    // an error, but the version is whole.
    auto loaded = (*c)->Load("term/model", {});
    ASSERT_TRUE(loaded.ok());
    for (size_t n = 0; n < b.tree().size(); ++n) EXPECT_EQ(loaded->data[n], b.data(n));
  } else {
    EXPECT_EQ(versions.status().code(), absl::StatusCode::kNotFound) << result.status();
  }
}

INSTANTIATE_TEST_SUITE_P(Grace, SigtermTest, ::testing::Values(0, 10));

}  // namespace
}  // namespace ckpt
