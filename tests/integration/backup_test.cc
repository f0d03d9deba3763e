// Online backups through the real ckpt-server process and the `ckpt` CLI: a
// backup taken while saves run is a data directory on which a new server
// serves every version committed before the backup started, byte-exact, and
// no partial one; the Backup RPC's refusals (backups off, a taken name, a bad
// name, a token without admin on "*").

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/raw_client.h"
#include "nlohmann/json.hpp"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::unique_ptr<client::RawClient> Connect(const std::string& address,
                                           const std::string& token = "") {
  client::ClientOptions options;
  options.connect_timeout = absl::Seconds(10);
  options.token = token;
  auto client = client::RawClient::Connect(address, options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// Blobs of 1-3 MiB, one per seed.
testing::TreeBuilder Blob(uint64_t seed) {
  testing::TreeBuilder b;
  b.Dict(2)
      .Tensor(std::string("w"), DType::kFloat32, {static_cast<int64_t>((seed % 3 + 1) << 18)}, seed)
      .Int(static_cast<int64_t>(seed), std::string("seed"));
  return b;
}

TEST(BackupTest, BackupTakenWhileSavesRunRestoresByteExact) {
  testing::TempDir dir;
  // The server creates its --backup-dir.
  auto server =
      testing::ServerProcess::Start(dir.path() + "/db", {"--backup-dir", dir.path() + "/backups"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = Connect((*server)->address());
  ASSERT_NE(client, nullptr);

  // A writer saves new versions of two names as fast as it can.
  std::mutex mu;
  std::map<std::pair<std::string, uint64_t>, uint64_t> acked;  // (name, version) -> seed
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::thread writer([&] {
    auto writer_client = Connect((*server)->address());
    if (writer_client == nullptr) return;
    for (uint64_t seed = 1; !stop.load(); ++seed) {
      const std::string name = seed % 2 ? "team/a" : "team/b";
      testing::TreeBuilder b = Blob(seed);
      client::SaveOptions options;
      options.metadata = {{"seed", absl::StrCat(seed)}};
      auto saved = writer_client->Save(name, b.Input(), options);
      if (!saved.ok()) {
        ++failures;
        ADD_FAILURE() << saved.status();
        return;
      }
      std::lock_guard<std::mutex> lock(mu);
      acked[{name, saved->version.version}] = seed;
    }
  });
  auto acked_now = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return acked;
  };
  // Deadline-bounded wait for a few versions before the backup.
  for (int i = 0; i < 600 && acked_now().size() < 4 && failures == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const auto before = acked_now();
  ASSERT_GE(before.size(), 4u);
  testing::CommandResult backup = testing::RunCommand(
      {testing::CliBinary(), "--server", (*server)->address(), "backup", "b1", "--json"});
  // Saves go on during and after the backup.
  for (int i = 0; i < 600 && acked_now().size() < before.size() + 4 && failures == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  stop = true;
  writer.join();
  ASSERT_EQ(backup.exit_code, 0) << backup.err;
  const auto info = nlohmann::json::parse(backup.out);
  EXPECT_EQ(info["name"], "b1");
  EXPECT_EQ(info["path"], dir.path() + "/backups/b1");
  const auto all = acked_now();
  ASSERT_GT(all.size(), before.size()) << "no save ran after the backup";

  // Restore as the README says: copy the backup to a new data directory and
  // start a server on it.
  (*server)->Kill();
  ASSERT_EQ(testing::RunCommand({"cp", "-a", dir.path() + "/backups/b1", dir.path() + "/restored"})
                .exit_code,
            0);
  auto restored = testing::ServerProcess::Start(dir.path() + "/restored");
  ASSERT_TRUE(restored.ok()) << restored.status();
  auto reader = Connect((*restored)->address());
  ASSERT_NE(reader, nullptr);
  uint64_t versions_in_backup = 0;
  for (const std::string name : {"team/a", "team/b"}) {
    auto versions = reader->ListVersions(name);
    ASSERT_TRUE(versions.ok()) << versions.status();
    uint64_t expected_version = 1;
    for (const VersionInfo& v : *versions) {
      // Gap-free, each one acknowledged to the writer, byte-exact.
      EXPECT_EQ(v.version, expected_version++);
      auto it = all.find({name, v.version});
      ASSERT_NE(it, all.end()) << name << "@" << v.version << " was never acknowledged";
      EXPECT_EQ(v.metadata.at("seed"), absl::StrCat(it->second));
      client::LoadOptions options;
      options.version = v.version;
      auto loaded = reader->Load(name, options);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      ASSERT_EQ(loaded->data.at(1), Blob(it->second).data(1)) << name << "@" << v.version;
      ++versions_in_backup;
    }
  }
  EXPECT_EQ(info["versions"], versions_in_backup);
  // Everything acknowledged before the backup started is in it.
  for (const auto& [key, seed] : before) {
    auto v = reader->ListVersions(key.first);
    ASSERT_TRUE(v.ok());
    EXPECT_GE(v->size(), key.second) << key.first << "@" << key.second << " missing";
  }
  EXPECT_LT(versions_in_backup, all.size()) << "saves after the backup are in it";
  // The restored store is a working store: gc, then the next version.
  ASSERT_TRUE(reader->GarbageCollect().ok());
  testing::TreeBuilder next = Blob(1000);
  auto saved = reader->Save("team/a", next.Input(), {});
  ASSERT_TRUE(saved.ok()) << saved.status();
  auto listed = reader->ListVersions("team/a");
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(saved->version.version, listed->size());
}

TEST(BackupTest, RefusalsSayWhy) {
  testing::TempDir dir;
  const std::string cli = testing::CliBinary();
  {
    auto off = testing::ServerProcess::Start(dir.path() + "/db0");
    ASSERT_TRUE(off.ok()) << off.status();
    auto r = testing::RunCommand({cli, "--server", (*off)->address(), "backup"});
    EXPECT_EQ(r.exit_code, 6) << r.err;
    EXPECT_EQ(r.err,
              "ckpt: FAILED_PRECONDITION: backups are off on this server: start ckpt-server "
              "with --backup-dir DIR\n");
  }
  // A --backup-dir that cannot be created stops the server at start.
  std::ofstream(dir.path() + "/file") << "x";
  auto bad = testing::RunCommand({testing::ServerBinary(), "--data-dir", dir.path() + "/dbx",
                                  "--listen", "127.0.0.1:0", "--metrics-listen", "", "--backup-dir",
                                  dir.path() + "/file/backups"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr("FAILED_PRECONDITION: --backup-dir " + dir.path() +
                                 "/file/backups is not a directory that can be created"));
  fs::create_directories(dir.path() + "/backups");
  const std::string tokens = dir.path() + "/tokens";
  std::ofstream(tokens) << "ops    ops-token-0123456789   admin *\n"
                           "team   team-token-0123456789  admin team\n";
  auto server = testing::ServerProcess::Start(
      dir.path() + "/db", {"--backup-dir", dir.path() + "/backups", "--tokens-file", tokens});
  ASSERT_TRUE(server.ok()) << server.status();
  auto run = [&](const std::string& token, std::vector<std::string> args) {
    std::vector<std::string> argv = {cli, "--server", (*server)->address(), "--token", token};
    argv.insert(argv.end(), args.begin(), args.end());
    return testing::RunCommand(argv);
  };
  // Admin on one namespace is not enough: a backup holds every namespace.
  auto denied = run("team-token-0123456789", {"backup", "b"});
  EXPECT_EQ(denied.exit_code, 7) << denied.err;
  EXPECT_THAT(denied.err, HasSubstr("PERMISSION_DENIED"));
  EXPECT_FALSE(fs::exists(dir.path() + "/backups/b"));

  auto ok = run("ops-token-0123456789", {"backup", "b"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_THAT(ok.out, HasSubstr("backup:"));
  EXPECT_TRUE(fs::exists(dir.path() + "/backups/b/CURRENT"));
  auto again = run("ops-token-0123456789", {"backup", "b"});
  EXPECT_EQ(again.exit_code, 6);
  EXPECT_THAT(again.err, HasSubstr("ALREADY_EXISTS: backup directory"));
  for (const std::string& bad :
       std::vector<std::string>{"..", "../escape", "a/b", std::string(129, 'x')}) {
    auto r = run("ops-token-0123456789", {"backup", bad});
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr("is not valid: letters, digits"));
  }
  EXPECT_FALSE(fs::exists(dir.path() + "/escape"));
  // No name: a timestamped one.
  auto named = run("ops-token-0123456789", {"backup", "--json"});
  ASSERT_EQ(named.exit_code, 0) << named.err;
  EXPECT_THAT(nlohmann::json::parse(named.out)["name"].get<std::string>(),
              ::testing::MatchesRegex("ckpt-backup-20[0-9]{6}T[0-9]{6}Z"));
}

}  // namespace
}  // namespace ckpt
