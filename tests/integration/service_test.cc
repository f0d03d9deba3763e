// The service end to end: an in-process ckpt server on 127.0.0.1:0 over a
// fresh RocksDB directory, driven through the client core.

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/raw_client.h"
#include "server/server.h"
#include "tests/testing/http.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/tree_matchers.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

using client::LoadOptions;
using client::RawClient;
using client::SaveOptions;
using testing::TreeBuilder;

class ServiceTest : public testing::ServerTest {
 protected:
  void AdjustOptions(server::ServerOptions& options) override {
    options.part_timeout = absl::Seconds(20);
  }
};

LoadOptions VersionOnly(uint64_t version) {
  LoadOptions options;
  options.version = version;
  return options;
}

using testing::ExpectSameTree;

// One tree with every kind of node of SPEC §1: the tutorial's checkpoint dict,
// an optimizer state with int keys, a list, a tuple, None, every dtype,
// 0-dim and empty tensors, a byte leaf and a tensor spanning many chunks.
TreeBuilder RichTree() {
  TreeBuilder b;
  b.Dict(9);
  b.Int(5, std::string("epoch"));
  b.Float(0.25, std::string("loss"));
  b.Dict(3, std::string("model_state_dict"))
      .Tensor(std::string("hidden.weight"), DType::kFloat32, {2, 3}, 1)
      .Tensor(std::string("hidden.bias"), DType::kFloat32, {2}, 2)
      .Tensor(std::string("bn.num_batches_tracked"), DType::kInt64, {}, 3);
  b.Dict(2, std::string("optimizer_state_dict"))
      .Dict(2, std::string("state"))
      .Dict(1, int64_t{0})
      .Tensor(std::string("momentum_buffer"), DType::kFloat32, {2, 3}, 4)
      .Dict(1, int64_t{1})
      .Tensor(std::string("momentum_buffer"), DType::kFloat32, {2}, 5)
      .List(1, std::string("param_groups"))
      .Dict(4)
      .Float(0.001, std::string("lr"))
      .Float(0.9, std::string("momentum"))
      .Bool(false, std::string("nesterov"))
      .List(2, std::string("params"))
      .Int(0)
      .Int(1);
  b.Tuple(3, std::string("misc")).None().String("héllo").Int(-(int64_t{1} << 62));
  b.List(15, std::string("dtypes"));
  for (int d = 1; d <= kMaxDType; ++d) b.Tensor({}, static_cast<DType>(d), {3, 2}, 10 + d);
  b.Tensor(std::string("empty"), DType::kFloat32, {0, 4}, 30);
  b.Bytes(std::string("script"), testing::RandomBytes(100000, 31));
  b.Tensor(std::string("big"), DType::kFloat64, {100, 1000}, 32, "cuda:1");
  return b;
}

TEST_F(ServiceTest, RoundTripsEveryKindOfValue) {
  TreeBuilder b = RichTree();
  SaveOptions options;
  options.step = 1200;
  options.epoch = 5;
  options.metadata = {{"run", "exp-1"}};
  options.tags = {"best"};
  auto saved = client_->Save("team/run-1/model", b.Input(), options);
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(saved->version.version, 1u);
  EXPECT_EQ(saved->version.step, 1200);
  EXPECT_EQ(saved->chunks_sent, saved->chunks_total);
  EXPECT_GT(saved->chunks_total, 12u);  // the 800 KB tensor spans 13 chunks of 64 KiB

  auto loaded = client_->Load("team/run-1/model", {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameTree(b.tree(), loaded->tree);
  for (size_t i = 0; i < b.tree().size(); ++i) {
    EXPECT_EQ(loaded->data[i], b.data(i)) << "node " << i;
  }
  EXPECT_EQ(loaded->version.version, 1u);
  EXPECT_EQ(loaded->version.metadata.at("run"), "exp-1");
  EXPECT_EQ(loaded->version.epoch, 5);

  // By tag, and the manifest alone.
  LoadOptions by_tag;
  by_tag.tag = "best";
  EXPECT_EQ(client_->Load("team/run-1/model", by_tag)->version.version, 1u);
  auto manifest = client_->GetManifest("team/run-1/model", 1, "");
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  ExpectSameTree(b.tree(), manifest->tree);
}

TEST_F(ServiceTest, SurvivesRestart) {
  TreeBuilder b = testing::StateDict(8, 50000, 1);
  ASSERT_TRUE(client_->Save("a/model", b.Input(), {}).ok());
  RestartServer();
  auto loaded = client_->Load("a/model", {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (size_t i = 0; i < b.tree().size(); ++i) EXPECT_EQ(loaded->data[i], b.data(i));
  // Numbering continues after the restart.
  EXPECT_EQ(client_->Save("a/model", b.Input(), {})->version.version, 2u);
}

TEST_F(ServiceTest, VersionsTagsAndLatest) {
  TreeBuilder b = testing::StateDict(2, 100, 1);
  for (int i = 1; i <= 3; ++i) {
    b.mutable_data(2)[0] = static_cast<char>(i);
    auto saved = client_->Save("t/m", b.Input(), {});
    ASSERT_TRUE(saved.ok());
    EXPECT_EQ(saved->version.version, static_cast<uint64_t>(i));
  }
  auto versions = client_->ListVersions("t/m");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->size(), 3u);
  EXPECT_EQ(versions->back().tags, std::vector<std::string>{"latest"});

  ASSERT_TRUE(client_->SetTag("t/m", "best", 2).ok());
  LoadOptions best;
  best.tag = "best";
  auto loaded = client_->Load("t/m", best);
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->version.version, 2u);
  EXPECT_EQ(loaded->data[2][0], 2);

  // A tagged version is protected unless forced.
  auto del = client_->DeleteVersion("t/m", 2, false);
  EXPECT_EQ(del.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(del.status().message().find("best"), std::string::npos) << del.status();
  ASSERT_TRUE(client_->DeleteTag("t/m", "best").ok());
  EXPECT_EQ(client_->DeleteTag("t/m", "best").code(), absl::StatusCode::kNotFound);

  // Deleting the newest moves latest back; numbers are never reused.
  ASSERT_TRUE(client_->DeleteVersion("t/m", 3, false).ok());
  EXPECT_EQ(client_->Load("t/m", {})->version.version, 2u);
  EXPECT_EQ(client_->Save("t/m", b.Input(), {})->version.version, 4u);
  EXPECT_EQ(client_->SetTag("t/m", "latest", 4).code(), absl::StatusCode::kInvalidArgument);

  auto list = client_->ListCheckpoints("t/");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "t/m");
  EXPECT_EQ((*list)[0].latest_version, 4u);
  EXPECT_EQ((*list)[0].num_versions, 3u);
}

TEST_F(ServiceTest, IncrementalSaveSendsOnlyChangedChunks) {
  // 20 tensors of 256 KiB = 4 chunks each.
  TreeBuilder b = testing::StateDict(20, 64 << 10, 7);
  auto first = client_->Save("inc/m", b.Input(), {});
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->bytes_sent, 20u * (256 << 10));
  EXPECT_EQ(first->version.new_bytes, 20u * (256 << 10));

  // Change 2 of 20 tensors (10 %), one byte in one chunk of each.
  b.mutable_data(2)[5] ^= 1;
  b.mutable_data(3)[(200 << 10)] ^= 1;
  auto second = client_->Save("inc/m", b.Input(), {});
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->chunks_sent, 2u);
  EXPECT_EQ(second->bytes_sent, 2u * (64 << 10));
  EXPECT_EQ(second->version.new_bytes, 2u * (64 << 10));

  auto info = client_->GetServerInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->stats.versions, 2u);
  EXPECT_EQ(info->stats.chunks, 82u);
  EXPECT_EQ(info->stats.logical_bytes, 2u * 20 * (256 << 10));

  // An identical save sends nothing at all.
  auto third = client_->Save("inc/m", b.Input(), {});
  EXPECT_EQ(third->bytes_sent, 0u);
  EXPECT_EQ(third->version.new_bytes, 0u);
  // Dedup is per namespace: another namespace stores its own copy.
  auto other = client_->Save("other/m", b.Input(), {});
  EXPECT_EQ(other->bytes_sent, 20u * (256 << 10));
}

// Nodes whose bytes are pulled through a DataSource (what the LibTorch
// client uses for device tensors) mixed with nodes in memory: the pulled
// chunks share messages with the others and straddle message boundaries
// (odd sizes), and everything loads back byte for byte.
TEST_F(ServiceTest, PulledNodesShareMessagesAndLoadBackEqual) {
  class Pull : public client::DataSource {
   public:
    explicit Pull(const std::string* bytes) : bytes_(bytes) {}
    absl::Status Read(uint64_t offset, absl::Span<uint8_t> out) override {
      std::memcpy(out.data(), bytes_->data() + offset, out.size());
      bytes_read += out.size();
      return absl::OkStatus();
    }
    uint64_t bytes_read = 0;

   private:
    const std::string* bytes_;
  };
  TreeBuilder b;
  b.Dict(12);
  for (int i = 0; i < 12; ++i) {
    b.Tensor("t" + std::to_string(i), DType::kUInt8, {i == 0 ? 100003 : 300001}, 40 + i);
  }
  client::SaveInput input = b.Input();
  input.sources.assign(input.tree.size(), nullptr);
  std::vector<std::unique_ptr<Pull>> pulls;
  for (size_t node = 2; node < input.tree.size(); node += 2) {
    pulls.push_back(std::make_unique<Pull>(&b.data(node)));
    input.sources[node] = pulls.back().get();
    input.bytes[node] = {};
  }
  ASSERT_OK_AND_ASSIGN(client::SaveResult saved, client_->Save("pulled/m", input, {}));
  EXPECT_EQ(saved.bytes_sent, 100003u + 11 * 300001u);
  for (const auto& pull : pulls) EXPECT_EQ(pull->bytes_read, 2 * 300001u);  // hashed, sent
  ASSERT_OK_AND_ASSIGN(client::LoadedValue loaded, client_->Load("pulled/m", {}));
  ASSERT_EQ(loaded.data.size(), input.tree.size());
  for (size_t node = 1; node < input.tree.size(); ++node) {
    EXPECT_EQ(loaded.data[node], b.data(node)) << "node " << node;
  }
}

// A client sends each chunk over 1 MiB whole, alone in a message, to a
// server whose messages hold a chunk and 64 KiB more (the default): the
// server joins no pieces. To a server started with --max-message-bytes
// 4194304 (the old default) it sends 1 MiB messages, whose pieces the server
// joins. Either way the server stores what was saved, and no message
// exceeds its limit (it would refuse it) however many small chunks share
// one.
TEST_F(ServiceTest, ChunksAreStoredTheSameWhetherSentWholeOrInPieces) {
  constexpr int kSmall = 3000;  // 1,400 bytes each: 4.2 MB in one node batch
  TreeBuilder b;
  b.Dict(2 + kSmall);
  b.Tensor("big", DType::kUInt8, {(9 << 20) + 3}, 60);  // chunks of 4, 4 and 1 MiB + 3
  b.Tensor("over_a_piece", DType::kUInt8, {(1 << 20) + 1}, 61);
  for (int i = 0; i < kSmall; ++i) {
    b.Tensor("s" + std::to_string(i), DType::kFloat32, {350}, 100 + i);
  }
  const uint64_t total = (9 << 20) + 3 + (1 << 20) + 1 + kSmall * 1400u;
  const struct {
    uint32_t max_message_bytes;
    double assembled;  // chunks over 1 MiB: 3 of big, over_a_piece
  } cases[] = {
      {4 << 20, 4}, {(4 << 20) + (64 << 10) - 1, 4}, {(4 << 20) + (64 << 10), 0}, {64 << 20, 0}};
  for (const auto& c : cases) {
    SCOPED_TRACE(absl::StrCat("max_message_bytes ", c.max_message_bytes));
    RestartServer([&c](server::ServerOptions& options) {
      options.chunk_size = 4 << 20;  // the default (the fixture's is 64 KiB)
      options.max_message_bytes = c.max_message_bytes;
      options.metrics_listen = "127.0.0.1:0";
    });
    // A namespace of its own: every chunk is sent again.
    const std::string name = absl::StrCat("framing", c.max_message_bytes, "/m");
    ASSERT_OK_AND_ASSIGN(client::SaveResult saved, client_->Save(name, b.Input(), {}));
    EXPECT_EQ(saved.bytes_sent, total);
    EXPECT_EQ(saved.chunks_sent, 3u + 1u + kSmall);
    ASSERT_OK_AND_ASSIGN(std::string scrape, testing::HttpGet(server_->metrics_port(), "/metrics"));
    EXPECT_EQ(testing::MetricValue(scrape, "ckpt_assembled_chunks_total"), c.assembled);
    ASSERT_OK_AND_ASSIGN(client::LoadedValue loaded, client_->Load(name, {}));
    ASSERT_EQ(loaded.data.size(), b.Input().tree.size());
    for (size_t node = 1; node < loaded.data.size(); ++node) {
      ASSERT_EQ(loaded.data[node], b.data(node)) << "node " << node;
    }
  }
}

TEST_F(ServiceTest, PatternsSelectKeysAndOnlyTheirBytes) {
  TreeBuilder b = RichTree();
  ASSERT_TRUE(client_->Save("p/m", b.Input(), {}).ok());
  LoadOptions options;
  options.patterns = {"model_state_dict/hidden.*", "epoch"};
  auto loaded = client_->Load("p/m", options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  std::vector<std::string> keys = FlattenedKeys(loaded->tree);
  EXPECT_EQ(keys, (std::vector<std::string>{"", "epoch", "model_state_dict",
                                            "model_state_dict/hidden.weight",
                                            "model_state_dict/hidden.bias"}));
  EXPECT_EQ(loaded->data[3], b.data(4));
  EXPECT_EQ(loaded->data[4], b.data(5));
  uint64_t bytes = 0;
  for (const auto& d : loaded->data) bytes += d.size();
  EXPECT_EQ(bytes, 24u + 8u);

  options.patterns = {"nope/*"};
  EXPECT_EQ(client_->Load("p/m", options).status().code(), absl::StatusCode::kNotFound);
  options.patterns = {"bad[pattern"};
  auto bad = client_->Load("p/m", options);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("unterminated '['"), std::string::npos);
}

TEST_F(ServiceTest, DeleteThenGcReclaimsOnlyUnreferencedChunks) {
  TreeBuilder a = testing::StateDict(4, 16 << 10, 1);
  TreeBuilder b = testing::StateDict(4, 16 << 10, 1);
  b.mutable_data(2)[0] ^= 1;  // one tensor differs
  ASSERT_TRUE(client_->Save("g/m", a.Input(), {}).ok());
  ASSERT_TRUE(client_->Save("g/m", b.Input(), {}).ok());
  auto released = client_->DeleteVersion("g/m", 1, false);
  ASSERT_TRUE(released.ok()) << released.status();
  EXPECT_EQ(*released, 1u);  // only the chunk version 2 does not share
  auto gc = client_->GarbageCollect();
  ASSERT_TRUE(gc.ok()) << gc.status();
  EXPECT_EQ(gc->chunks_removed, 1u);
  EXPECT_EQ(gc->bytes_removed, 64u << 10);
  auto loaded = client_->Load("g/m", {});
  ASSERT_TRUE(loaded.ok());
  for (size_t i = 0; i < b.tree().size(); ++i) EXPECT_EQ(loaded->data[i], b.data(i));
  EXPECT_EQ(client_->Load("g/m", VersionOnly(1)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ServiceTest, MultiPartSaveCommitsWhenAllRanksAreIn) {
  constexpr int kRanks = 4;
  std::vector<TreeBuilder> parts;
  for (int r = 0; r < kRanks; ++r) {
    TreeBuilder b;
    b.Dict(2)
        .Tensor(absl::StrCat("rank", r, ".weight"), DType::kFloat32, {1000}, 100 + r)
        .Int(r, absl::StrCat("rank", r, ".step"));
    parts.push_back(std::move(b));
  }
  std::vector<absl::StatusOr<client::SaveResult>> results(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      SaveOptions options;
      options.rank = r;
      options.world_size = kRanks;
      options.save_id = "step-100";
      options.step = 100;
      results[r] = client_->Save("dist/job", parts[r].Input(), options);
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_TRUE(results[r].ok()) << "rank " << r << ": " << results[r].status();
    EXPECT_EQ(results[r]->version.version, 1u);
    EXPECT_EQ(results[r]->version.world_size, 4u);
  }
  auto all = client_->Load("dist/job", {});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->tree.size(), 1u + 2 * kRanks);
  // Each rank restores its own keys.
  LoadOptions mine;
  mine.patterns = {"rank2.*"};
  auto rank2 = client_->Load("dist/job", mine);
  ASSERT_TRUE(rank2.ok());
  ASSERT_EQ(rank2->tree.size(), 3u);
  EXPECT_EQ(rank2->data[1], parts[2].data(1));
  EXPECT_EQ(rank2->tree[2].int_value, 2);
}

TEST_F(ServiceTest, MultiPartSaveWithCollidingKeysCommitsNothing) {
  std::vector<absl::StatusOr<client::SaveResult>> results(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      TreeBuilder b;
      b.Dict(1).Tensor(std::string("same.key"), DType::kFloat32, {10}, r);
      SaveOptions options;
      options.rank = r;
      options.world_size = 2;
      options.save_id = "s";
      results[r] = client_->Save("dist/bad", b.Input(), options);
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(results[r].status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(results[r].status().message().find("duplicate dict key 'same.key'"),
              std::string::npos)
        << results[r].status();
  }
  EXPECT_EQ(client_->ListVersions("dist/bad").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ServiceTest, ServerInfoAndHealth) {
  EXPECT_TRUE(client_->Health().ok());
  auto info = client_->GetServerInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->chunk_size, 64u << 10);
  EXPECT_FALSE(info->server_version.empty());
}

}  // namespace
}  // namespace ckpt

#include "rocksdb/db.h"
#include "storage/rocksdb_store.h"

namespace ckpt {
namespace {

// A chunk corrupted on disk: the load fails with DATA_LOSS naming the
// checkpoint, the version and the tensor key, and returns no bytes of it.
TEST_F(ServiceTest, CorruptChunkIsDataLossNamingCheckpointVersionAndKey) {
  TreeBuilder b;
  b.Dict(2)
      .Tensor(std::string("fine"), DType::kFloat32, {1000}, 1)
      .Tensor(std::string("layer.weight"), DType::kFloat32, {1000}, 2);
  ASSERT_TRUE(client_->Save("c/model", b.Input(), {}).ok());
  client_.reset();
  server_.reset();

  const std::string path = dir_.path() + "/db";
  const Digest digest = Digest::Of(b.data(2));
  uint64_t id = 0;
  {
    auto store = storage::Store::Open({path});
    ASSERT_TRUE(store.ok());
    auto* rocks = dynamic_cast<storage::RocksDbStore*>(store->get());
    ASSERT_NE(rocks, nullptr);
    auto found = rocks->ChunkIdOf("c/model", digest);
    ASSERT_TRUE(found.ok()) << found.status();
    id = *found;
  }
  {
    std::vector<rocksdb::ColumnFamilyDescriptor> families;
    for (const char* name :
         {rocksdb::kDefaultColumnFamilyName.c_str(), storage::kChunksFamily, storage::kRefsFamily,
          storage::kManifestsFamily, storage::kTagsFamily}) {
      families.emplace_back(name, rocksdb::ColumnFamilyOptions());
    }
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), path, families, &handles, &raw).ok());
    std::string flipped = b.data(2);
    flipped[100] ^= 1;
    std::string key(8, '\0');
    for (int i = 0; i < 8; ++i) key[i] = static_cast<char>(id >> (56 - 8 * i));
    rocksdb::WriteOptions sync;
    sync.sync = true;
    ASSERT_TRUE(raw->Put(sync, handles[1], key, flipped).ok());
    for (auto* h : handles) ASSERT_TRUE(raw->DestroyColumnFamilyHandle(h).ok());
    ASSERT_TRUE(raw->Close().ok());
    delete raw;
  }
  StartServer();
  auto loaded = client_->Load("c/model", {});
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(loaded.status().message(),
            "checkpoint 'c/model' version 1 tensor 'layer.weight': chunk " + digest.Hex() +
                " checksum mismatch");
  // The intact tensor still loads on its own.
  LoadOptions fine;
  fine.patterns = {"fine"};
  auto ok = client_->Load("c/model", fine);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->data[1], b.data(1));
}

// A deadline shorter than the save: DEADLINE_EXCEEDED and no version.
TEST_F(ServiceTest, DeadlineIsHonoured) {
  TreeBuilder b = testing::StateDict(64, 1 << 18, 3);  // 64 MiB
  SaveOptions options;
  options.timeout = absl::Milliseconds(5);
  auto saved = client_->Save("d/model", b.Input(), options);
  EXPECT_EQ(saved.status().code(), absl::StatusCode::kDeadlineExceeded) << saved.status();
  EXPECT_EQ(client_->ListVersions("d/model").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(client_->Save("d/model", b.Input(), {}).ok());
  LoadOptions load;
  load.timeout = absl::Milliseconds(2);
  EXPECT_EQ(client_->Load("d/model", load).status().code(), absl::StatusCode::kDeadlineExceeded);
}

// connect_timeout zero: Connect returns at once, even for an address where
// no server listens; calls then report Unavailable, and a client made before
// its server answers works once it does.
TEST_F(ServiceTest, ConnectWithoutWaitingReportsAnUnreachableServerOnTheFirstCall) {
  client::ClientOptions lazy;
  lazy.connect_timeout = absl::ZeroDuration();
  const absl::Time start = absl::Now();
  auto down = RawClient::Connect("127.0.0.1:1", lazy);
  ASSERT_TRUE(down.ok()) << down.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  client::CallOptions quick;
  quick.timeout = absl::Seconds(10);
  EXPECT_EQ((*down)->ListVersions("a/b", quick).status().code(), absl::StatusCode::kUnavailable);
  LoadOptions load;
  load.timeout = absl::Seconds(10);
  EXPECT_EQ((*down)->Load("a/b", load).status().code(), absl::StatusCode::kUnavailable);

  auto up = RawClient::Connect(address(), lazy);
  ASSERT_TRUE(up.ok()) << up.status();
  TreeBuilder b = testing::StateDict(2, 16, 1);
  ASSERT_TRUE((*up)->Save("lazy/m", b.Input(), {}).ok());
  auto loaded = (*up)->Load("lazy/m", {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectSameTree(b.tree(), loaded->tree);
}

// Per-call options of the unary calls: their own deadline (covering every
// page of a listing) and extra metadata.
TEST_F(ServiceTest, CallOptionsSetTheDeadlineOfOneCall) {
  TreeBuilder b = testing::StateDict(2, 16, 1);
  ASSERT_TRUE(client_->Save("c/m", b.Input(), {}).ok());
  client::CallOptions quick;
  quick.timeout = absl::Nanoseconds(1);
  EXPECT_EQ(client_->ListVersions("c/m", quick).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(client_->GetServerInfo(quick).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(client_->Health(quick).code(), absl::StatusCode::kDeadlineExceeded);
  client::CallOptions traced;
  traced.timeout = absl::Seconds(30);
  traced.headers = {{"x-request-id", "42"}};
  auto versions = client_->ListVersions("c/m", traced);
  ASSERT_TRUE(versions.ok()) << versions.status();
  EXPECT_EQ(versions->size(), 1u);
}

// Close() cancels the calls in flight (a save cut off leaves no version) and
// refuses later ones; the server is unaffected.
TEST_F(ServiceTest, CloseCancelsCallsInFlightAndRefusesLaterOnes) {
  TreeBuilder b = testing::StateDict(16, 1 << 18, 3);  // 16 MiB in 16 batches
  ASSERT_TRUE(client_->Save("c/saved", b.Input(), {}).ok());
  client::ClientOptions small_batches;
  small_batches.batch_bytes = 1 << 20;
  auto closing = RawClient::Connect(address(), small_batches);
  ASSERT_TRUE(closing.ok()) << closing.status();
  SaveOptions options;
  options.progress = [&](uint64_t done, uint64_t total) {
    if (done > 0 && done < total) (*closing)->Close();
  };
  auto cut = (*closing)->Save("c/cut", b.Input(), options);
  EXPECT_EQ(cut.status().code(), absl::StatusCode::kCancelled) << cut.status();

  // A load closed from its sink.
  struct CloseOnData : client::LoadSink {
    RawClient* client;
    absl::Status OnTree(const VersionInfo&, const Tree&) override { return absl::OkStatus(); }
    absl::Status OnData(size_t, uint64_t, absl::string_view) override {
      client->Close();
      return absl::OkStatus();
    }
  };
  auto reader = RawClient::Connect(address(), {});
  ASSERT_TRUE(reader.ok());
  CloseOnData sink;
  sink.client = reader->get();
  EXPECT_EQ((*reader)->Load("c/saved", {}, &sink).code(), absl::StatusCode::kCancelled);

  for (RawClient* closed : {closing->get(), reader->get()}) {
    auto refused = closed->ListVersions("c/saved");
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(refused.status().message(), "client is closed");
    EXPECT_EQ(closed->Load("c/saved", {}).status().code(), absl::StatusCode::kFailedPrecondition);
    closed->Close();  // idempotent
  }
  EXPECT_EQ(client_->ListVersions("c/cut").status().code(), absl::StatusCode::kNotFound);
  auto full = client_->Load("c/saved", {});
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->data[2], b.data(2));
}

// A StopSource stops its own load (Cancelled), from another thread or from
// the sink, even before it starts; the client's other loads go on. A save
// stopped halfway commits nothing.
TEST_F(ServiceTest, AStopSourceStopsItsCallAlone) {
  TreeBuilder b = testing::StateDict(16, 1 << 18, 3);  // 16 MiB
  ASSERT_TRUE(client_->Save("s/m", b.Input(), {}).ok());

  client::StopSource early;
  early.Stop();
  LoadOptions stopped;
  stopped.stop = &early;
  auto refused = client_->Load("s/m", stopped);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kCancelled) << refused.status();
  EXPECT_EQ(refused.status().message(), "the load was stopped");

  // Stopped by a thread that waits until the load has begun.
  struct Signals : client::LoadSink {
    absl::Notification tree;
    absl::Status OnTree(const VersionInfo&, const Tree&) override {
      tree.Notify();
      return absl::OkStatus();
    }
    absl::Status OnData(size_t, uint64_t, absl::string_view) override { return absl::OkStatus(); }
  } sink;
  client::StopSource stop;
  LoadOptions options;
  options.stop = &stop;
  std::thread stopper([&] {
    sink.tree.WaitForNotification();
    stop.Stop();
  });
  // The other load shares the client and is not stopped.
  auto other = client_->Load("s/m", {});
  absl::Status status = client_->Load("s/m", options, &sink);
  stopper.join();
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->data[2], b.data(2));
  // (The stop may land after the last piece: then the load is complete.)
  if (!status.ok()) {
    EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
    EXPECT_EQ(status.message(), "the load was stopped");
  }
  EXPECT_TRUE(stop.stopped());

  // Stopped from the sink, at its first piece (of 16 MiB).
  struct StopOnData : client::LoadSink {
    client::StopSource* stop;
    size_t pieces = 0;
    absl::Status OnTree(const VersionInfo&, const Tree&) override { return absl::OkStatus(); }
    absl::Status OnData(size_t, uint64_t, absl::string_view) override {
      if (++pieces == 1) stop->Stop();
      return absl::OkStatus();
    }
  } stopping;
  client::StopSource own;
  stopping.stop = &own;
  LoadOptions cut;
  cut.stop = &own;
  absl::Status cut_status = client_->Load("s/m", cut, &stopping);
  EXPECT_EQ(cut_status.code(), absl::StatusCode::kCancelled) << cut_status;
  auto after = client_->Load("s/m", {});
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->data[2], b.data(2));

  // A save stopped halfway leaves no version.
  client::ClientOptions small_batches;
  small_batches.batch_bytes = 1 << 20;
  auto writer = RawClient::Connect(address(), small_batches);
  ASSERT_TRUE(writer.ok()) << writer.status();
  client::StopSource save_stop;
  SaveOptions save;
  save.stop = &save_stop;
  save.progress = [&](uint64_t done, uint64_t total) {
    if (done > 0 && done < total) save_stop.Stop();
  };
  auto stopped_save = (*writer)->Save("s/stopped", b.Input(), save);
  EXPECT_EQ(stopped_save.status().code(), absl::StatusCode::kCancelled) << stopped_save.status();
  EXPECT_EQ(stopped_save.status().message(), "the save was stopped");
  EXPECT_EQ(client_->ListVersions("s/stopped").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*writer)->Save("s/next", b.Input(), {}).ok());  // the client goes on
}

// Retention: a policy set before the first save is applied after each
// save, before Save returns; tagged, best and newest versions stay.
TEST_F(ServiceTest, RetentionPolicyIsAppliedAfterEachSave) {
  RetentionPolicy policy;
  policy.keep_last = 2;
  policy.keep_best = 1;
  policy.metric = "loss";
  auto would = client_->SetRetention("ret/model", policy);
  ASSERT_TRUE(would.ok()) << would.status();
  EXPECT_TRUE(would->empty());
  auto stored = client_->GetRetention("ret/model");
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(*stored, policy);

  const char* losses[] = {"0.5", "0.1", "0.4", "0.3", "0.2"};
  std::vector<TreeBuilder> saved;
  for (int i = 0; i < 5; ++i) {
    saved.push_back(testing::StateDict(2, 100, 40 + i));
    SaveOptions options;
    options.metadata = {{"loss", losses[i]}};
    if (i == 0) options.tags = {"release"};
    auto result = client_->Save("ret/model", saved.back().Input(), options);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->pruned_versions, i == 4 ? std::vector<uint64_t>{3} : std::vector<uint64_t>{})
        << i;
  }
  // v1 tagged, v2 the best loss, v4 and v5 the last two: v3 went when v5
  // was saved.
  auto versions = client_->ListVersions("ret/model");
  ASSERT_TRUE(versions.ok());
  std::vector<uint64_t> left;
  for (const VersionInfo& v : *versions) left.push_back(v.version);
  EXPECT_EQ(left, (std::vector<uint64_t>{1, 2, 4, 5}));
  for (uint64_t v : left) {
    LoadOptions load;
    load.version = v;
    auto loaded = client_->Load("ret/model", load);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->data[2], saved[v - 1].data(2)) << v;
  }
  auto pruned = client_->Prune("ret/model", /*dry_run=*/false);
  ASSERT_TRUE(pruned.ok());
  EXPECT_TRUE(pruned->empty());

  // A tighter policy reports what it would delete, and Prune deletes it.
  policy.keep_last = 1;
  would = client_->SetRetention("ret/model", policy);
  ASSERT_TRUE(would.ok());
  EXPECT_EQ(*would, (std::vector<uint64_t>{4}));
  pruned = client_->Prune("ret/model", false);
  ASSERT_TRUE(pruned.ok());
  EXPECT_EQ(*pruned, (std::vector<uint64_t>{4}));

  // Bad policies and names are refused with the reason.
  RetentionPolicy bad;
  bad.keep_best = 1;
  auto refused = client_->SetRetention("ret/model", bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(refused.status().message(), "keep_best needs a metric (a metadata key such as 'loss')");
  EXPECT_EQ(client_->Prune("ret/none", true).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->GetRetention("bad//name").status().code(), absl::StatusCode::kInvalidArgument);
  // Clearing the policy keeps everything from then on.
  ASSERT_TRUE(client_->SetRetention("ret/model", {}).ok());
  EXPECT_FALSE(client_->GetRetention("ret/model")->enabled());
}

// Loads cut off at every point of the stream (deadlines from 1 to 40 ms
// over a 64 MiB checkpoint): each ends DEADLINE_EXCEEDED or completes, and
// the server keeps serving whole, correct loads.
TEST_F(ServiceTest, LoadsCutOffMidStreamLeaveTheServerServing) {
  TreeBuilder b = testing::StateDict(64, 1 << 18, 5);  // 64 MiB
  ASSERT_TRUE(client_->Save("cut/model", b.Input(), {}).ok());
  for (int round = 0; round < 80; ++round) {
    LoadOptions load;
    load.timeout = absl::Milliseconds(1 + round % 40);
    auto loaded = client_->Load("cut/model", load);
    if (!loaded.ok()) {
      EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDeadlineExceeded) << loaded.status();
    }
  }
  auto whole = client_->Load("cut/model", {});
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->data.size(), b.tree().size());
  for (size_t i = 0; i < b.tree().size(); ++i) EXPECT_EQ(whole->data[i], b.data(i)) << i;
}

}  // namespace
}  // namespace ckpt
