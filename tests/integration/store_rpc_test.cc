// The Store conformance suite's operations once more, through the service:
// each case runs against the Store interface directly and against a real
// in-process server reached by the client core (RawClient over gRPC on
// 127.0.0.1), with the same assertions. What a user sees through the wire
// (version numbers, tags, listings, codes and messages, retention, garbage
// collection, totals) must be what the store promises; behaviours of the
// store alone (uploads, pins, layouts) stay in tests/storage.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "client/raw_client.h"
#include "common/status_macros.h"
#include "server/server.h"
#include "tests/storage/store_test_util.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/status_matchers.h"
#include "tests/testing/temp_dir.h"

namespace ckpt {
namespace {

using storage::VersionSelector;
using storage::test::Backend;
using storage::test::Blob;
using storage::test::kChunk;
using storage::test::Model;
using storage::test::RandomBytes;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

/// {key: bytes} of a loaded version, with its VersionInfo.
struct Contents {
  VersionInfo version;
  std::map<std::string, std::string> tensors;
};

/// One way to reach a store. Every method is one user-visible operation.
class Surface {
 public:
  virtual ~Surface() = default;
  virtual absl::StatusOr<VersionInfo> Save(const std::string& name, const std::vector<Blob>& blobs,
                                           std::vector<std::string> tags = {}) = 0;
  virtual absl::StatusOr<Contents> Read(const std::string& name, VersionSelector selector) = 0;
  virtual absl::StatusOr<VersionInfo> GetVersion(const std::string& name,
                                                 VersionSelector selector) = 0;
  virtual absl::StatusOr<std::vector<CheckpointSummary>> List(const std::string& prefix) = 0;
  virtual absl::StatusOr<std::vector<VersionInfo>> Versions(const std::string& name) = 0;
  virtual absl::StatusOr<uint64_t> Delete(const std::string& name, uint64_t version,
                                          bool force) = 0;
  virtual absl::Status SetTag(const std::string& name, const std::string& tag,
                              uint64_t version) = 0;
  virtual absl::Status DeleteTag(const std::string& name, const std::string& tag) = 0;
  virtual absl::Status SetRetention(const std::string& name, const RetentionPolicy& policy) = 0;
  virtual absl::StatusOr<RetentionPolicy> GetRetention(const std::string& name) = 0;
  virtual absl::StatusOr<std::vector<uint64_t>> Prune(const std::string& name, bool dry_run) = 0;
  virtual absl::StatusOr<GcResult> Gc() = 0;
  virtual absl::StatusOr<StoreStats> Stats() = 0;
};

/// The Store interface itself, on a store of the conformance suite's
/// harness (a fresh temporary directory).
class StoreSurface : public Surface, public storage::test::StoreHarness {
 public:
  explicit StoreSurface(Backend backend) { StartStore(backend); }
  ~StoreSurface() override { StopStore(); }

  absl::StatusOr<VersionInfo> Save(const std::string& name, const std::vector<Blob>& blobs,
                                   std::vector<std::string> tags) override {
    return StoreHarness::Save(name, blobs, std::move(tags));
  }
  absl::StatusOr<Contents> Read(const std::string& name, VersionSelector selector) override {
    Contents out;
    CKPT_ASSIGN_OR_RETURN(out.version, store_->GetVersion(name, selector));
    CKPT_ASSIGN_OR_RETURN(Tree tree, store_->GetTree(name, out.version.version));
    for (const Node& node : tree) {
      if (!node.has_data()) continue;
      std::string bytes, chunk;
      for (const Digest& digest : node.data.chunks) {
        CKPT_RETURN_IF_ERROR(store_->ReadChunk(name, digest, &chunk));
        bytes += chunk;
      }
      out.tensors[std::get<std::string>(node.key)] = std::move(bytes);
    }
    return out;
  }
  absl::StatusOr<VersionInfo> GetVersion(const std::string& name,
                                         VersionSelector selector) override {
    return store_->GetVersion(name, selector);
  }
  absl::StatusOr<std::vector<CheckpointSummary>> List(const std::string& prefix) override {
    return store_->ListCheckpoints(prefix, "", 0);
  }
  absl::StatusOr<std::vector<VersionInfo>> Versions(const std::string& name) override {
    return store_->ListVersions(name);
  }
  absl::StatusOr<uint64_t> Delete(const std::string& name, uint64_t version, bool force) override {
    return store_->DeleteVersion(name, version, force);
  }
  absl::Status SetTag(const std::string& name, const std::string& tag, uint64_t version) override {
    return store_->SetTag(name, tag, version);
  }
  absl::Status DeleteTag(const std::string& name, const std::string& tag) override {
    return store_->DeleteTag(name, tag);
  }
  absl::Status SetRetention(const std::string& name, const RetentionPolicy& policy) override {
    return store_->SetRetention(name, policy);
  }
  absl::StatusOr<RetentionPolicy> GetRetention(const std::string& name) override {
    return store_->GetRetention(name);
  }
  absl::StatusOr<std::vector<uint64_t>> Prune(const std::string& name, bool dry_run) override {
    return store_->Prune(name, dry_run);
  }
  absl::StatusOr<GcResult> Gc() override { return store_->CollectGarbage(); }
  absl::StatusOr<StoreStats> Stats() override { return store_->Stats(); }
};

/// A real server on a store in a fresh temporary directory, reached by the
/// client core. Saves use the harness's chunk size, so chunk counts match.
class ServiceSurface : public Surface {
 public:
  explicit ServiceSurface(Backend backend) {
    server::ServerOptions options = testing::TestServerOptions(dir_.path());
    options.log_level = server::LogLevel::kWarn;
    auto store = storage::test::BackendOptions(backend, options.store);
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return;
    options.store = *store;
    auto server = server::Server::Start(options);
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return;
    server_ = *std::move(server);
    client::ClientOptions client_options;
    client_options.chunk_size = kChunk;
    auto client = client::RawClient::Connect(testing::AddressOf(*server_), client_options);
    EXPECT_TRUE(client.ok()) << client.status();
    if (client.ok()) client_ = *std::move(client);
  }
  bool ready() const { return client_ != nullptr; }

  absl::StatusOr<VersionInfo> Save(const std::string& name, const std::vector<Blob>& blobs,
                                   std::vector<std::string> tags) override {
    client::SaveInput input;
    input.tree = storage::test::MakeTree(blobs);
    input.bytes.resize(input.tree.size());
    for (size_t i = 0; i < blobs.size(); ++i) {
      input.tree[i + 1].data.chunks.clear();
      input.bytes[i + 1] = storage::test::AsBytes(blobs[i].bytes);
    }
    client::SaveOptions options;
    options.tags = std::move(tags);
    CKPT_ASSIGN_OR_RETURN(client::SaveResult saved, client_->Save(name, input, options));
    return saved.version;
  }
  absl::StatusOr<Contents> Read(const std::string& name, VersionSelector selector) override {
    client::LoadOptions options;
    options.version = selector.version;
    options.tag = selector.tag;
    CKPT_ASSIGN_OR_RETURN(client::LoadedValue loaded, client_->Load(name, options));
    Contents out;
    out.version = loaded.version;
    for (size_t i = 0; i < loaded.tree.size(); ++i) {
      if (!loaded.tree[i].has_data()) continue;
      out.tensors[std::get<std::string>(loaded.tree[i].key)] = loaded.data[i];
    }
    return out;
  }
  absl::StatusOr<VersionInfo> GetVersion(const std::string& name,
                                         VersionSelector selector) override {
    CKPT_ASSIGN_OR_RETURN(client::LoadedValue manifest,
                          client_->GetManifest(name, selector.version, selector.tag));
    return manifest.version;
  }
  absl::StatusOr<std::vector<CheckpointSummary>> List(const std::string& prefix) override {
    return client_->ListCheckpoints(prefix);
  }
  absl::StatusOr<std::vector<VersionInfo>> Versions(const std::string& name) override {
    return client_->ListVersions(name);
  }
  absl::StatusOr<uint64_t> Delete(const std::string& name, uint64_t version, bool force) override {
    return client_->DeleteVersion(name, version, force);
  }
  absl::Status SetTag(const std::string& name, const std::string& tag, uint64_t version) override {
    return client_->SetTag(name, tag, version);
  }
  absl::Status DeleteTag(const std::string& name, const std::string& tag) override {
    return client_->DeleteTag(name, tag);
  }
  absl::Status SetRetention(const std::string& name, const RetentionPolicy& policy) override {
    return client_->SetRetention(name, policy).status();
  }
  absl::StatusOr<RetentionPolicy> GetRetention(const std::string& name) override {
    return client_->GetRetention(name);
  }
  absl::StatusOr<std::vector<uint64_t>> Prune(const std::string& name, bool dry_run) override {
    return client_->Prune(name, dry_run);
  }
  absl::StatusOr<GcResult> Gc() override { return client_->GarbageCollect(); }
  absl::StatusOr<StoreStats> Stats() override {
    CKPT_ASSIGN_OR_RETURN(ServerInfo info, client_->GetServerInfo());
    return info.stats;
  }

 private:
  testing::TempDir dir_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<client::RawClient> client_;
};

enum class Via { kStore, kService };

struct Param {
  Backend backend;
  Via via;
};

void PrintTo(const Param& param, std::ostream* os) {
  *os << storage::test::BackendName(param.backend)
      << (param.via == Via::kStore ? " via Store" : " via the service");
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return storage::test::BackendName(info.param.backend) +
         (info.param.via == Via::kStore ? "Store" : "Service");
}

class StoreRpcTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (GetParam().via == Via::kStore) {
      surface_ = std::make_unique<StoreSurface>(GetParam().backend);
    } else {
      auto service = std::make_unique<ServiceSurface>(GetParam().backend);
      ASSERT_TRUE(service->ready());
      surface_ = std::move(service);
    }
  }
  Surface& s() { return *surface_; }

  std::unique_ptr<Surface> surface_;
};

TEST_P(StoreRpcTest, SaveThenReadBack) {
  ASSERT_OK_AND_ASSIGN(VersionInfo info, s().Save("team/run/model", Model()));
  EXPECT_EQ(info.name, "team/run/model");
  EXPECT_EQ(info.version, 1u);
  EXPECT_EQ(info.num_tensors, 3u);
  EXPECT_EQ(info.num_nodes, 4u);
  EXPECT_EQ(info.data_bytes, 3510u);
  EXPECT_EQ(info.new_bytes, 3510u);
  EXPECT_THAT(info.tags, ElementsAre("latest"));
  EXPECT_GT(info.create_time_ms, 1600000000000);

  ASSERT_OK_AND_ASSIGN(Contents got, s().Read("team/run/model", {}));
  EXPECT_EQ(got.version.version, 1u);
  EXPECT_EQ(got.version.create_time_ms, info.create_time_ms);
  EXPECT_EQ(got.version.data_bytes, 3510u);
  EXPECT_THAT(got.version.tags, ElementsAre("latest"));
  ASSERT_EQ(got.tensors.size(), Model().size());
  for (const Blob& blob : Model()) EXPECT_EQ(got.tensors[blob.key], blob.bytes) << blob.key;

  // The same chunks again: nothing new is stored.
  ASSERT_OK_AND_ASSIGN(VersionInfo again, s().Save("team/run/model", Model()));
  EXPECT_EQ(again.version, 2u);
  EXPECT_EQ(again.new_bytes, 0u);
  ASSERT_OK_AND_ASSIGN(StoreStats stats, s().Stats());
  EXPECT_EQ(stats.checkpoints, 1u);
  EXPECT_EQ(stats.versions, 2u);
  EXPECT_EQ(stats.chunks, 5u);
  EXPECT_EQ(stats.stored_bytes, 3510u);
  EXPECT_EQ(stats.logical_bytes, 2 * 3510u);
}

TEST_P(StoreRpcTest, VersionNumbersAreNeverReused) {
  for (uint64_t v = 1; v <= 3; ++v) {
    ASSERT_OK_AND_ASSIGN(VersionInfo info, s().Save("a/b", {{"x", RandomBytes(100, v)}}));
    EXPECT_EQ(info.version, v);
  }
  ASSERT_OK_AND_ASSIGN(uint64_t freed, s().Delete("a/b", 3, false));
  EXPECT_EQ(freed, 1u);
  ASSERT_OK_AND_ASSIGN(VersionInfo latest, s().GetVersion("a/b", {}));
  EXPECT_EQ(latest.version, 2u);
  EXPECT_THAT(latest.tags, ElementsAre("latest"));
  ASSERT_OK_AND_ASSIGN(VersionInfo v4, s().Save("a/b", {{"x", RandomBytes(100, 4)}}));
  EXPECT_EQ(v4.version, 4u);
  for (uint64_t v : {1, 2, 4}) ASSERT_OK(s().Delete("a/b", v, false).status());
  EXPECT_EQ(s().Versions("a/b").status().code(), absl::StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN(VersionInfo v5, s().Save("a/b", {{"x", RandomBytes(100, 5)}}));
  EXPECT_EQ(v5.version, 5u);
}

TEST_P(StoreRpcTest, NotFoundSaysWhatIsMissing) {
  ASSERT_OK(s().Save("a/b", Model()).status());
  auto expect_not_found = [](const absl::Status& status, const std::string& message) {
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
    EXPECT_EQ(status.message(), message);
  };
  expect_not_found(s().GetVersion("x/y", {}).status(), "checkpoint 'x/y' not found");
  expect_not_found(s().GetVersion("a/b", {7, ""}).status(), "version 7 of 'a/b' not found");
  expect_not_found(s().GetVersion("a/b", {0, "best"}).status(), "tag 'best' of 'a/b' not found");
  expect_not_found(s().Read("a/b", {7, ""}).status(), "version 7 of 'a/b' not found");
  expect_not_found(s().Versions("x/y").status(), "checkpoint 'x/y' not found");
  EXPECT_EQ(s().Delete("a/b", 7, true).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s().DeleteTag("a/b", "nope").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s().SetTag("a/b", "best", 7).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s().Prune("x/y", true).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(StoreRpcTest, InvalidNamesAndTagsChangeNothing) {
  for (const char* bad : {"a//b", "../x", "a b", "/abs"}) {
    EXPECT_EQ(s().Save(bad, Model()).status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(s().GetVersion(bad, {}).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  ASSERT_OK(s().Save("a/b", Model()).status());
  for (const char* bad : {"bad tag", "123", "latest", "no/slash"}) {
    EXPECT_EQ(s().SetTag("a/b", bad, 1).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(s().Save("a/b", Model(), {"latest"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s().DeleteTag("a/b", "latest").code(), absl::StatusCode::kInvalidArgument);
  ASSERT_OK_AND_ASSIGN(auto versions, s().Versions("a/b"));
  ASSERT_EQ(versions.size(), 1u);
  EXPECT_THAT(versions[0].tags, ElementsAre("latest"));
  ASSERT_OK_AND_ASSIGN(StoreStats stats, s().Stats());
  EXPECT_EQ(stats.versions, 1u);
}

TEST_P(StoreRpcTest, TagsMoveAndNeedForceToDelete) {
  ASSERT_OK_AND_ASSIGN(VersionInfo v1, s().Save("a/b", {{"x", RandomBytes(10, 1)}}, {"best"}));
  EXPECT_THAT(v1.tags, ElementsAre("best", "latest"));
  ASSERT_OK(s().SetTag("a/b", "release", 1));
  ASSERT_OK(s().Save("a/b", {{"x", RandomBytes(10, 2)}}).status());
  ASSERT_OK_AND_ASSIGN(VersionInfo by_tag, s().GetVersion("a/b", {0, "best"}));
  EXPECT_EQ(by_tag.version, 1u);
  EXPECT_THAT(by_tag.tags, ElementsAre("best", "release"));
  ASSERT_OK_AND_ASSIGN(Contents released, s().Read("a/b", {0, "release"}));
  EXPECT_EQ(released.tensors["x"], RandomBytes(10, 1));

  absl::Status tagged = s().Delete("a/b", 1, false).status();
  EXPECT_EQ(tagged.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(tagged.message()), HasSubstr("best"));
  ASSERT_OK(s().SetTag("a/b", "best", 2));  // moves
  ASSERT_OK(s().DeleteTag("a/b", "release"));
  ASSERT_OK_AND_ASSIGN(auto versions, s().Versions("a/b"));
  ASSERT_EQ(versions.size(), 2u);
  EXPECT_THAT(versions[0].tags, ElementsAre());
  EXPECT_THAT(versions[1].tags, ElementsAre("best", "latest"));
  ASSERT_OK(s().Delete("a/b", 1, false).status());
  ASSERT_OK(s().Delete("a/b", 2, true).status());  // force drops "best"
  EXPECT_EQ(s().GetVersion("a/b", {0, "best"}).status().code(), absl::StatusCode::kNotFound);
}

TEST_P(StoreRpcTest, ListingsAreInOrder) {
  for (const char* name : {"t/b", "t/a", "u/c", "t/a"}) {
    ASSERT_OK(s().Save(name, {{"x", RandomBytes(10, 7)}}).status());
  }
  ASSERT_OK_AND_ASSIGN(auto all, s().List(""));
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].name, "t/a");
  EXPECT_EQ(all[0].num_versions, 2u);
  EXPECT_EQ(all[0].latest_version, 2u);
  EXPECT_EQ(all[1].name, "t/b");
  EXPECT_EQ(all[2].name, "u/c");
  ASSERT_OK_AND_ASSIGN(auto under_t, s().List("t/"));
  ASSERT_EQ(under_t.size(), 2u);
  EXPECT_EQ(under_t[1].name, "t/b");
  ASSERT_OK_AND_ASSIGN(auto none, s().List("v/"));
  EXPECT_TRUE(none.empty());
  ASSERT_OK_AND_ASSIGN(auto versions, s().Versions("t/a"));
  ASSERT_EQ(versions.size(), 2u);
  EXPECT_EQ(versions[0].version, 1u);
  EXPECT_EQ(versions[1].version, 2u);
}

TEST_P(StoreRpcTest, RetentionPersistsAndPruneDeletesWhatItPicks) {
  for (uint64_t v = 1; v <= 4; ++v) {
    ASSERT_OK(s().Save("a/b", {{"x", RandomBytes(100, v)}}).status());
  }
  ASSERT_OK(s().SetTag("a/b", "keep", 1));
  ASSERT_OK_AND_ASSIGN(RetentionPolicy none, s().GetRetention("a/b"));
  EXPECT_EQ(none.keep_last, 0u);
  RetentionPolicy policy;
  policy.keep_last = 2;
  ASSERT_OK(s().SetRetention("a/b", policy));
  ASSERT_OK_AND_ASSIGN(RetentionPolicy got, s().GetRetention("a/b"));
  EXPECT_EQ(got.keep_last, 2u);
  ASSERT_OK_AND_ASSIGN(auto would, s().Prune("a/b", true));
  EXPECT_THAT(would, ElementsAre(2u));
  ASSERT_OK_AND_ASSIGN(auto versions, s().Versions("a/b"));
  EXPECT_EQ(versions.size(), 4u);  // a dry run deletes nothing
  ASSERT_OK_AND_ASSIGN(auto pruned, s().Prune("a/b", false));
  EXPECT_THAT(pruned, ElementsAre(2u));
  ASSERT_OK_AND_ASSIGN(versions, s().Versions("a/b"));
  ASSERT_EQ(versions.size(), 3u);
  EXPECT_EQ(versions[0].version, 1u);  // tagged
  EXPECT_EQ(versions[1].version, 3u);
  RetentionPolicy bad;
  bad.keep_best = 1;  // without a metric
  EXPECT_EQ(s().SetRetention("a/b", bad).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_OK(s().SetRetention("a/b", RetentionPolicy{}));
  ASSERT_OK_AND_ASSIGN(got, s().GetRetention("a/b"));
  EXPECT_EQ(got.keep_last, 0u);
}

TEST_P(StoreRpcTest, DeleteThenGcReclaimsExactlyTheUnsharedChunks) {
  const std::vector<Blob> first = {{"shared", RandomBytes(2500, 1)}, {"own", RandomBytes(1500, 2)}};
  const std::vector<Blob> second = {{"shared", RandomBytes(2500, 1)}, {"own", RandomBytes(10, 3)}};
  ASSERT_OK(s().Save("a/b", first).status());
  ASSERT_OK_AND_ASSIGN(VersionInfo v2, s().Save("a/b", second));
  EXPECT_EQ(v2.new_bytes, 10u);
  ASSERT_OK_AND_ASSIGN(StoreStats before, s().Stats());
  EXPECT_EQ(before.chunks, 6u);  // 3 shared + 2 own of v1 + 1 own of v2
  EXPECT_EQ(before.garbage_bytes, 0u);
  ASSERT_OK_AND_ASSIGN(uint64_t freed, s().Delete("a/b", 1, false));
  EXPECT_EQ(freed, 2u);
  ASSERT_OK_AND_ASSIGN(StoreStats after_delete, s().Stats());
  EXPECT_EQ(after_delete.garbage_bytes, 1500u);
  ASSERT_OK_AND_ASSIGN(GcResult gc, s().Gc());
  EXPECT_EQ(gc.chunks_removed, 2u);
  EXPECT_EQ(gc.bytes_removed, 1500u);
  ASSERT_OK_AND_ASSIGN(GcResult again, s().Gc());
  EXPECT_EQ(again.chunks_removed, 0u);
  ASSERT_OK_AND_ASSIGN(StoreStats after, s().Stats());
  EXPECT_EQ(after.versions, 1u);
  EXPECT_EQ(after.chunks, 4u);
  EXPECT_EQ(after.stored_bytes, 2510u);
  EXPECT_EQ(after.garbage_bytes, 0u);
  ASSERT_OK_AND_ASSIGN(Contents left, s().Read("a/b", {}));
  EXPECT_EQ(left.tensors["shared"], RandomBytes(2500, 1));
  EXPECT_EQ(left.tensors["own"], RandomBytes(10, 3));
}

INSTANTIATE_TEST_SUITE_P(Surfaces, StoreRpcTest,
                         ::testing::Values(Param{Backend::kRocksDb, Via::kStore},
                                           Param{Backend::kRocksDb, Via::kService},
                                           Param{Backend::kRados, Via::kStore},
                                           Param{Backend::kRados, Via::kService}),
                         ParamName);

}  // namespace
}  // namespace ckpt
