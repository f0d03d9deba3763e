// A full disk, on a small real file system (a tmpfs mounted by the test; it
// needs root, as CI has): the real ckpt-server process must
//   - refuse saves with RESOURCE_EXHAUSTED and leave nothing partial,
//   - keep serving reads,
//   - delete versions and collect garbage through the API even when another
//     process filled the disk to the last byte, after which saves succeed
//     again without a restart,
//   - open a store on a full disk after a restart (kill -9 included),
//   - do all of it for large manifests (20k-tensor checkpoints) too.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/raw_client.h"
#include "rocksdb/env.h"
#include "storage/rocksdb_log.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

constexpr int kFsMiB = 160;
constexpr int kReservedMiB = 24;

std::string ReadWhole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class DiskFullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mount_ = dir_.path() + "/fs";
    std::filesystem::create_directories(mount_);
    testing::CommandResult m = testing::RunCommand(
        {"mount", "-t", "tmpfs", "-o", absl::StrCat("size=", kFsMiB, "m"), "tmpfs", mount_});
    ASSERT_EQ(m.exit_code, 0) << "this test mounts a " << kFsMiB
                              << " MiB tmpfs and needs root: " << m.err;
    mounted_ = true;
    Start();
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
    if (mounted_) testing::RunCommand({"umount", "-l", mount_});
  }

  void Start(int reserved_mib = kReservedMiB, const std::string& db = "db",
             std::vector<std::string> flags = {}) {
    server_.reset();  // its destructor removes the log the new one writes
    flags.insert(flags.begin(), {"--reserved-disk-mib", absl::StrCat(reserved_mib)});
    auto server =
        testing::ServerProcess::Start(mount_ + "/" + db, flags, dir_.path() + "/server.log");
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client::ClientOptions options;
    options.connect_timeout = absl::Seconds(10);
    auto client = client::RawClient::Connect(server_->address(), options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  // Stops the server SetUp started and starts one with `reserved_mib` on a
  // store without that server's reserve file.
  void RestartWithReserve(int reserved_mib) {
    client_.reset();
    server_.reset();
    std::filesystem::remove(mount_ + "/db/RESERVED");
    Start(reserved_mib);
  }

  // Writes a file until the file system has no byte left (another process
  // filling the disk).
  void FillDisk(const std::string& name) {
    const int fd = open((mount_ + "/" + name).c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ASSERT_GE(fd, 0);
    std::string block(1 << 16, 'x');
    for (;;) {
      if (write(fd, block.data(), block.size()) < 0) break;
    }
    for (;;) {  // the last few bytes
      if (write(fd, block.data(), 1) < 0) break;
    }
    close(fd);
  }

  absl::StatusOr<client::SaveResult> SaveBlob(const std::string& name, int mib, uint64_t seed) {
    testing::TreeBuilder b;
    b.Dict(1).Tensor(std::string("blob"), DType::kUInt8, {int64_t{mib} << 20}, seed);
    blobs_[seed] = b.data(1);
    client::SaveOptions options;
    options.metadata = {{"seed", absl::StrCat(seed)}};
    options.timeout = absl::Seconds(60);
    return client_->Save(name, b.Input(), options);
  }

  // Every version of `name` loads byte-exact.
  void ExpectAllLoad(const std::string& name) {
    auto versions = client_->ListVersions(name);
    ASSERT_TRUE(versions.ok()) << versions.status();
    for (const VersionInfo& v : *versions) {
      client::LoadOptions options;
      options.version = v.version;
      auto loaded = client_->Load(name, options);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      const uint64_t seed = std::stoull(v.metadata.at("seed"));
      ASSERT_EQ(loaded->data[1], blobs_.at(seed)) << "version " << v.version;
    }
  }

  testing::TempDir dir_;
  std::string mount_;
  bool mounted_ = false;
  std::unique_ptr<testing::ServerProcess> server_;
  std::unique_ptr<client::RawClient> client_;
  std::map<uint64_t, std::string> blobs_;
};

TEST_F(DiskFullTest, SavesStopCleanlyAndDeletesAndGcMakeRoomWithoutARestart) {
  // Puts of 20-45 MiB until the disk is full.
  std::vector<uint64_t> saved;
  absl::Status refused;
  for (uint64_t seed = 1; seed <= 20 && refused.ok(); ++seed) {
    auto result = SaveBlob("full/blob", 20 + static_cast<int>(seed * 7 % 26), seed);
    if (result.ok()) {
      saved.push_back(result->version.version);
    } else {
      refused = result.status();
    }
  }
  ASSERT_FALSE(refused.ok()) << "the disk never filled up";
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(refused.message().find("disk full"), std::string::npos) << refused;
  EXPECT_EQ(refused.message().find(mount_), std::string::npos)
      << "the store's path leaks to clients: " << refused;
  ASSERT_GE(saved.size(), 2u);

  // Nothing partial: exactly the acknowledged versions, each byte-exact.
  auto versions = client_->ListVersions("full/blob");
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->size(), saved.size());
  ExpectAllLoad("full/blob");
  ASSERT_TRUE(client_->Health().ok());

  // Another process takes every byte that is left.
  FillDisk("filler1");
  auto small = SaveBlob("full/other", 1, 100);
  EXPECT_EQ(small.status().code(), absl::StatusCode::kResourceExhausted) << small.status();
  ExpectAllLoad("full/blob");

  // Deletes and gc work on the full disk, and make room for saves again.
  for (size_t i = 0; i + 1 < saved.size(); ++i) {
    auto deleted = client_->DeleteVersion("full/blob", saved[i], /*force=*/false);
    ASSERT_TRUE(deleted.ok()) << deleted.status();
  }
  auto gc = client_->GarbageCollect();
  ASSERT_TRUE(gc.ok()) << gc.status() << "\nserver log:\n" << server_->Log();
  EXPECT_GT(gc->bytes_removed, uint64_t{40} << 20);
  auto again = SaveBlob("full/blob", 20, 200);
  ASSERT_TRUE(again.ok()) << again.status();
  ExpectAllLoad("full/blob");

  // A restart on a full disk, after a kill -9, opens the store.
  FillDisk("filler2");
  server_->Kill();
  client_.reset();
  Start();
  ExpectAllLoad("full/blob");
  auto listed = client_->ListVersions("full/blob");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->size(), 2u);
  // ... and deletes and gc work there too.
  ASSERT_TRUE(client_->DeleteVersion("full/blob", listed->front().version, false).ok());
  ASSERT_TRUE(client_->GarbageCollect().ok());
  ExpectAllLoad("full/blob");
}

// Garbage collection on a disk filled to the last byte, with more dead
// references than the reserve has room to delete in one write: it deletes
// them in bounded batches, frees the chunk files of those it deleted, goes
// on in the room that made, and in the end collects them all, so that saves
// work again without removing anything else.
TEST_F(DiskFullTest, GcOnAFullDiskCollectsMoreDeadChunksThanTheReserveCouldDeleteAtOnce) {
  RestartWithReserve(3);
  ASSERT_TRUE(SaveBlob("full/blob", 1, 1).ok());
  // 6 versions of 20,000 distinct 256-byte tensors: 120,000 chunks whose
  // references take ~2.9 MB of deletes, more than the 3 MiB reserve leaves
  // after the 1 MiB every write keeps.
  constexpr int kVersions = 6, kTensors = 20000;
  for (int v = 0; v < kVersions; ++v) {
    const testing::TreeBuilder b = testing::StateDict(kTensors, 64, uint64_t{100000} * (v + 1));
    auto saved = client_->Save("full/many", b.Input(), {});
    ASSERT_TRUE(saved.ok()) << "version " << v << ": " << saved.status();
  }
  auto versions = client_->ListVersions("full/many");
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->size(), static_cast<size_t>(kVersions));
  for (const VersionInfo& v : *versions) {
    ASSERT_TRUE(client_->DeleteVersion("full/many", v.version, false).ok());
  }
  // A restart ends RocksDB's flushes and compactions of the writes above
  // (one meeting the disk filled under it would fail and stop RocksDB's
  // writes until it has that much room again: README "Metrics, logs and
  // limits") and, with room on the disk, flushes what it recovered: the
  // memtables start empty. Then the disk fills while the server runs.
  server_->Kill();
  client_.reset();
  Start(/*reserved_mib=*/3);
  FillDisk("filler");
  auto refused = SaveBlob("full/blob", 4, 2);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  auto gc = client_->GarbageCollect();
  ASSERT_TRUE(gc.ok()) << gc.status() << "\nserver log:\n"
                       << server_->Log() << "\nRocksDB LOG:\n"
                       << ReadWhole(mount_ + "/db/LOG");
  EXPECT_EQ(gc->chunks_removed, uint64_t{kVersions} * kTensors);
  EXPECT_EQ(gc->bytes_removed, uint64_t{kVersions} * kTensors * 256);
  // The space is back: a save fits with the filler still there.
  auto saved = SaveBlob("full/blob", 4, 3);
  ASSERT_TRUE(saved.ok()) << saved.status() << "\nserver log:\n" << server_->Log();
  ExpectAllLoad("full/blob");
  auto again = client_->GarbageCollect();
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->chunks_removed, 0u);
  ASSERT_TRUE(client_->Health().ok());
}

// A new store on a disk with a few MiB left and no reserve: the server
// starts (its format record may use the room kept for deletes and gc),
// serves, refuses saves in words, and saves once there is room.
TEST_F(DiskFullTest, ANewStoreOpensOnANearlyFullDiskWithNoReserve) {
  client_.reset();
  server_.reset();
  FillDisk("filler");
  ASSERT_EQ(
      truncate((mount_ + "/filler").c_str(),
               static_cast<off_t>(std::filesystem::file_size(mount_ + "/filler")) - (4 << 20)),
      0);
  Start(/*reserved_mib=*/0, "new-db");
  ASSERT_NE(server_, nullptr);
  ASSERT_TRUE(client_->Health().ok());
  auto refused = SaveBlob("full/blob", 1, 1);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_NE(refused.status().message().find("disk full"), std::string::npos) << refused.status();
  std::filesystem::remove(mount_ + "/filler");
  auto saved = SaveBlob("full/blob", 1, 2);
  ASSERT_TRUE(saved.ok()) << saved.status() << "\nserver log:\n" << server_->Log();
  ExpectAllLoad("full/blob");
}

// With no reserved space (--reserved-disk-mib 0) every write meets the full
// disk. RocksDB 7.8 aborts (assertions in Debian's build) on the next append
// to a WAL or LOG whose last write failed, so the store must refuse
// metadata writes before RocksDB meets the full disk and write its LOG
// through a logger that drops what finds no room: the server serves on,
// refuses in words, and saves again once space is freed.
TEST_F(DiskFullTest, WithNoReserveAFullDiskRefusesWritesAndTheServerServesOn) {
  RestartWithReserve(0);
  ASSERT_TRUE(SaveBlob("full/blob", 4, 1).ok());
  for (int round = 0; round < 12; ++round) {
    FillDisk("filler");
    auto refused = SaveBlob("full/blob", 1, 100 + round);
    EXPECT_FALSE(refused.ok()) << "round " << round;
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
    EXPECT_EQ(refused.status().message().find(mount_), std::string::npos)
        << "the store's path leaks to clients: " << refused.status();
    for (int i = 0; i < 4; ++i) {
      absl::Status tagged = client_->SetTag("full/blob", absl::StrCat("t", round, "-", i), 1);
      EXPECT_EQ(tagged.code(), absl::StatusCode::kResourceExhausted) << tagged;
      EXPECT_NE(tagged.message().find("disk full"), std::string::npos) << tagged;
      EXPECT_NE(tagged.message().find("nothing was written"), std::string::npos) << tagged;
    }
    ASSERT_TRUE(client_->Health().ok()) << "round " << round << "\nserver log:\n" << server_->Log();
    ExpectAllLoad("full/blob");
    // Room again: saves succeed without a restart.
    std::filesystem::remove(mount_ + "/filler");
    absl::StatusOr<client::SaveResult> saved;
    for (int attempt = 0; attempt < 60; ++attempt) {
      saved = SaveBlob("full/blob", 1, 200 + round);
      if (saved.ok()) break;
      absl::SleepFor(absl::Milliseconds(500));
    }
    ASSERT_TRUE(saved.ok()) << "round " << round << ": " << saved.status() << "\nserver log:\n"
                            << server_->Log();
  }
  auto tags = client_->ListVersions("full/blob");
  ASSERT_TRUE(tags.ok()) << tags.status();
  EXPECT_EQ(tags->size(), 13u);
  for (const VersionInfo& v : *tags) {
    for (const std::string& tag : v.tags) EXPECT_EQ(tag, "latest") << "version " << v.version;
  }
  ExpectAllLoad("full/blob");
}

// The store's RocksDB LOG: whole lines (long ones too), the newest files
// kept as it rotates, lines that find no room dropped without harm, and
// lines again once there is room.
TEST_F(DiskFullTest, TheStoreLogDropsLinesWithoutRoomAndKeepsItsNewestFiles) {
  const std::string dir = mount_ + "/log";
  std::filesystem::create_directories(dir);
  std::shared_ptr<rocksdb::Logger> log =
      storage::internal::OpenRocksDbLog(dir, /*keep_files=*/3, /*max_file_bytes=*/64 << 10);
  const std::string long_line(3000, 'L');
  rocksdb::Log(rocksdb::InfoLogLevel::INFO_LEVEL, log, "long %s end", long_line.c_str());
  EXPECT_NE(ReadWhole(dir + "/LOG").find("long " + long_line + " end\n"), std::string::npos);

  for (int i = 0; i < 5000; ++i)
    rocksdb::Log(rocksdb::InfoLogLevel::INFO_LEVEL, log, "line %d of the first batch", i);
  int old_files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string().rfind("LOG.old.", 0) == 0) ++old_files;
  }
  EXPECT_EQ(old_files, 2);
  EXPECT_NE(ReadWhole(dir + "/LOG").find(" line 4999 of the first batch\n"), std::string::npos);

  FillDisk("filler");
  for (int i = 0; i < 5000; ++i)
    rocksdb::Log(rocksdb::InfoLogLevel::WARN_LEVEL, log, "line %d on a full disk %s", i, "x");
  std::filesystem::remove(mount_ + "/filler");
  rocksdb::Log(rocksdb::InfoLogLevel::INFO_LEVEL, log, "room again");
  const std::string text = ReadWhole(dir + "/LOG");
  const size_t at = text.rfind(" room again\n");
  ASSERT_NE(at, std::string::npos);
  // The line stands on a line of its own, whole: its time stamp, its
  // thread, the text (a line cut short by the full disk ends before it).
  const size_t line_start = text.rfind('\n', at);
  ASSERT_NE(line_start, std::string::npos);
  const std::string line = text.substr(line_start + 1, at + 12 - line_start - 1);
  EXPECT_TRUE(std::regex_match(
      line, std::regex("[0-9]{4}/[0-9]{2}/[0-9]{2}-[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6} "
                       "[0-9a-f]+ room again\n")))
      << line;
}

TEST_F(DiskFullTest, LargeManifestsOnAFullDiskNeverHurtTheStore) {
  // 20,000 tensors of 64 bytes: a manifest of several MB per version.
  testing::TreeBuilder big;
  big.Dict(20000);
  for (int i = 0; i < 20000; ++i) {
    big.Tensor(absl::StrCat("layers.", i, ".weight"), DType::kFloat32, {16}, 7000 + i);
  }
  auto first = client_->Save("full/many", big.Input(), {});
  ASSERT_TRUE(first.ok()) << first.status();

  // The disk fills; every save is refused or succeeds, the server serves on.
  FillDisk("filler");
  for (int round = 0; round < 3; ++round) {
    // Change a tenth of the tensors so that chunks are new.
    for (int i = round; i < 20000; i += 10) big.mutable_data(1 + i)[0] ^= 0x5a;
    auto result = client_->Save("full/many", big.Input(), {});
    if (!result.ok()) {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
    }
    ASSERT_TRUE(client_->Health().ok());
    auto loaded = client_->Load("full/many", {});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->tree.size(), 20001u);
  }
  // Deleting versions and gc still work, and a restart opens the store.
  auto versions = client_->ListVersions("full/many");
  ASSERT_TRUE(versions.ok());
  for (size_t i = 0; i + 1 < versions->size(); ++i) {
    ASSERT_TRUE(client_->DeleteVersion("full/many", (*versions)[i].version, false).ok());
  }
  ASSERT_TRUE(client_->GarbageCollect().ok());
  server_->Kill();
  client_.reset();
  Start();
  auto loaded = client_->Load("full/many", {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->tree.size(), 20001u);
}

}  // namespace
}  // namespace ckpt
