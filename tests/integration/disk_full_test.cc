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
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/raw_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

constexpr int kFsMiB = 160;
constexpr int kReservedMiB = 24;

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

  void Start() {
    auto server = testing::ServerProcess::Start(
        mount_ + "/db", {"--reserved-disk-mib", absl::StrCat(kReservedMiB)});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client::ClientOptions options;
    options.connect_timeout = absl::Seconds(10);
    auto client = client::RawClient::Connect(server_->address(), options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
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
