// 16+ concurrent writers and readers on the same and on different names,
// with deletes and garbage collection running underneath. Bounded: every
// thread does a fixed amount of work.

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/raw_client.h"
#include "server/server.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

constexpr int kWriters = 10;  // 5 on one shared name, 5 on names of their own
constexpr int kReaders = 8;
constexpr int kSavesPerWriter = 8;

// Content of a save: a tensor shared by every save (deduplicated, and pinned
// while GC runs), one per writer, and one unique to the save.
testing::TreeBuilder Content(uint64_t seed, int writer) {
  testing::TreeBuilder b;
  b.Dict(4)
      .Tensor(std::string("frozen"), DType::kFloat32, {40000}, 7)
      .Tensor(std::string("per_writer"), DType::kFloat32, {30000}, 100 + writer)
      .Tensor(std::string("fresh"), DType::kFloat32, {50000}, seed)
      .Int(static_cast<int64_t>(seed), std::string("seed"));
  return b;
}

struct Registry {
  std::mutex mu;
  std::map<std::pair<std::string, uint64_t>, uint64_t> committed;  // -> seed
  std::set<std::pair<std::string, uint64_t>> deleted;
};

class ConcurrencyTest : public testing::ServerTest {
 protected:
  void AdjustOptions(server::ServerOptions& options) override { options.worker_threads = 8; }

  // Loads (name, version) and checks it is exactly the save with `seed`.
  static void ExpectExact(client::RawClient& c, const std::string& name, uint64_t version,
                          uint64_t seed, int writer, Registry* reg) {
    client::LoadOptions lo;
    lo.version = version;
    auto loaded = c.Load(name, lo);
    if (!loaded.ok() && reg != nullptr) {
      // Only a version deleted meanwhile may be missing.
      ASSERT_EQ(loaded.status().code(), absl::StatusCode::kNotFound) << loaded.status();
      std::lock_guard<std::mutex> lock(reg->mu);
      EXPECT_TRUE(reg->deleted.count({name, version})) << name << "@" << version << " vanished";
      return;
    }
    ASSERT_TRUE(loaded.ok()) << name << "@" << version << ": " << loaded.status();
    testing::TreeBuilder want = Content(seed, writer);
    ASSERT_EQ(loaded->tree.size(), want.tree().size());
    EXPECT_EQ(loaded->tree[4].int_value, static_cast<int64_t>(seed));
    for (size_t n = 0; n < want.tree().size(); ++n) {
      ASSERT_EQ(loaded->data[n], want.data(n)) << name << "@" << version << " node " << n;
    }
  }
};

TEST_F(ConcurrencyTest, WritersReadersDeletesAndGcLoseNothing) {
  Registry reg;
  std::atomic<int> writers_done{0};
  std::atomic<int> failures{0};
  std::map<std::string, std::vector<uint64_t>> versions_by_name;
  std::mutex versions_mu;
  std::map<uint64_t, int> seed_writer;
  for (int w = 0; w < kWriters; ++w) {
    for (int s = 0; s < kSavesPerWriter; ++s) seed_writer[w * 1000 + s + 1] = w;
  }

  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      auto c = client::RawClient::Connect(address(), {});
      ASSERT_TRUE(c.ok());
      const std::string name = w < kWriters / 2 ? "conc/shared" : absl::StrCat("conc/own-", w);
      for (int s = 0; s < kSavesPerWriter; ++s) {
        const uint64_t seed = w * 1000 + s + 1;
        testing::TreeBuilder b = Content(seed, w);
        auto saved = (*c)->Save(name, b.Input(), {});
        if (!saved.ok()) {
          ++failures;
          ADD_FAILURE() << name << ": " << saved.status();
          continue;
        }
        std::lock_guard<std::mutex> lock(versions_mu);
        versions_by_name[name].push_back(saved->version.version);
        std::lock_guard<std::mutex> rlock(reg.mu);
        reg.committed[{name, saved->version.version}] = seed;
      }
      ++writers_done;
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      auto c = client::RawClient::Connect(address(), {});
      ASSERT_TRUE(c.ok());
      std::mt19937 rng(r);
      int loads = 0;
      while ((writers_done.load() < kWriters || loads < 5) && loads < 200) {
        std::pair<std::string, uint64_t> pick;
        uint64_t seed = 0;
        {
          std::lock_guard<std::mutex> lock(reg.mu);
          if (reg.committed.empty()) {
            std::this_thread::yield();
            continue;
          }
          auto it = reg.committed.begin();
          std::advance(it, rng() % reg.committed.size());
          pick = it->first;
          seed = it->second;
        }
        ExpectExact(**c, pick.first, pick.second, seed, seed_writer[seed], &reg);
        ++loads;
      }
    });
  }
  // Deleter + garbage collector: deletes older versions of the shared name
  // while writers are still saving, and collects garbage in a loop.
  threads.emplace_back([&] {
    auto c = client::RawClient::Connect(address(), {});
    ASSERT_TRUE(c.ok());
    int rounds = 0;
    while (writers_done.load() < kWriters && rounds < 400) {
      ++rounds;
      std::pair<std::string, uint64_t> victim;
      {
        std::lock_guard<std::mutex> lock(reg.mu);
        for (const auto& [key, seed] : reg.committed) {
          if (key.first == "conc/shared" && !reg.deleted.count(key) && key.second % 3 == 1) {
            victim = key;
            reg.deleted.insert(key);
            break;
          }
        }
      }
      if (!victim.first.empty()) {
        auto del = (*c)->DeleteVersion(victim.first, victim.second, false);
        EXPECT_TRUE(del.ok()) << del.status();
      }
      auto gc = (*c)->GarbageCollect();
      EXPECT_TRUE(gc.ok()) << gc.status();
    }
  });
  for (auto& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);

  // Distinct version numbers with no gaps, per name.
  for (auto& [name, versions] : versions_by_name) {
    std::sort(versions.begin(), versions.end());
    const size_t expected =
        name == "conc/shared" ? (kWriters / 2) * kSavesPerWriter : kSavesPerWriter;
    ASSERT_EQ(versions.size(), expected) << name;
    for (size_t i = 0; i < versions.size(); ++i) EXPECT_EQ(versions[i], i + 1) << name;
  }

  // After a final GC, every committed version not deleted loads exactly.
  auto c = client::RawClient::Connect(address(), {});
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->GarbageCollect().ok());
  for (const auto& [key, seed] : reg.committed) {
    if (reg.deleted.count(key)) {
      client::LoadOptions lo;
      lo.version = key.second;
      EXPECT_EQ((*c)->Load(key.first, lo).status().code(), absl::StatusCode::kNotFound);
      continue;
    }
    ExpectExact(**c, key.first, key.second, seed, seed_writer[seed], nullptr);
  }
  EXPECT_FALSE(reg.deleted.empty());
}

}  // namespace
}  // namespace ckpt
