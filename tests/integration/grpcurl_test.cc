// The README's grpcurl commands, run for real through server reflection
// (grpcurl has no .proto files here).

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "client/raw_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

std::string Grpcurl() {
  const char* env = std::getenv("CKPT_GRPCURL");
  return env ? env : "/usr/local/bin/grpcurl";
}

class GrpcurlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = testing::ServerProcess::Start(dir_.path() + "/db");
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = client::RawClient::Connect(server_->address(), {});
    ASSERT_TRUE(client.ok());
    testing::TreeBuilder b;
    b.Dict(2)
        .Int(5, std::string("epoch"))
        .Dict(1, std::string("model_state_dict"))
        .Tensor(std::string("hidden.weight"), DType::kFloat32, {2, 3}, 1);
    client::SaveOptions options;
    options.tags = {"best"};
    ASSERT_TRUE((*client)->Save("team/run-1/model", b.Input(), options).ok());
  }

  // grpcurl -plaintext [-d DATA] ADDRESS METHOD...
  testing::CommandResult Call(const std::string& data, std::vector<std::string> rest) {
    std::vector<std::string> args = {Grpcurl(), "-plaintext"};
    if (!data.empty()) args.insert(args.end(), {"-d", data});
    args.push_back(server_->address());
    args.insert(args.end(), rest.begin(), rest.end());
    return testing::RunCommand(args);
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::ServerProcess> server_;
};

TEST_F(GrpcurlTest, ListAndDescribeThroughReflection) {
  auto list = Call("", {"list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("ckpt.v1.CheckpointService"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("grpc.health.v1.Health"), std::string::npos) << list.out;

  auto describe = Call("", {"describe", "ckpt.v1.CheckpointService"});
  ASSERT_EQ(describe.exit_code, 0) << describe.err;
  EXPECT_NE(describe.out.find("rpc Save ( stream .ckpt.v1.SaveRequest )"), std::string::npos)
      << describe.out;
  auto health_describe = Call("", {"describe", "grpc.health.v1.Health"});
  ASSERT_EQ(health_describe.exit_code, 0) << health_describe.err;
  EXPECT_NE(health_describe.out.find("rpc Check"), std::string::npos);
}

TEST_F(GrpcurlTest, QueriesFromTheReadme) {
  auto ls = Call(R"({"prefix": "team/"})", {"ckpt.v1.CheckpointService/ListCheckpoints"});
  ASSERT_EQ(ls.exit_code, 0) << ls.err;
  EXPECT_NE(ls.out.find(R"("name": "team/run-1/model")"), std::string::npos) << ls.out;

  auto versions =
      Call(R"({"name": "team/run-1/model"})", {"ckpt.v1.CheckpointService/ListVersions"});
  ASSERT_EQ(versions.exit_code, 0) << versions.err;
  EXPECT_NE(versions.out.find(R"("best")"), std::string::npos) << versions.out;

  auto manifest = Call(R"({"name": "team/run-1/model", "tag": "best"})",
                       {"ckpt.v1.CheckpointService/GetManifest"});
  ASSERT_EQ(manifest.exit_code, 0) << manifest.err;
  EXPECT_NE(manifest.out.find(R"("str_key": "hidden.weight")"), std::string::npos) << manifest.out;
  EXPECT_NE(manifest.out.find(R"("dtype": "DTYPE_FLOAT32")"), std::string::npos) << manifest.out;

  // Load streams JSON messages; skip_data leaves the tensor bytes out.
  auto tree = Call(R"({"name": "team/run-1/model", "skip_data": true})",
                   {"ckpt.v1.CheckpointService/Load"});
  ASSERT_EQ(tree.exit_code, 0) << tree.err;
  EXPECT_NE(tree.out.find(R"("header")"), std::string::npos) << tree.out;
  EXPECT_NE(tree.out.find(R"("str_key": "hidden.weight")"), std::string::npos) << tree.out;
  EXPECT_EQ(tree.out.find(R"("pieces")"), std::string::npos) << tree.out;

  auto set = Call(R"({"name": "team/run-1/model", "policy": {"keep_last": 3}})",
                  {"ckpt.v1.CheckpointService/SetRetention"});
  ASSERT_EQ(set.exit_code, 0) << set.err;
  auto get = Call(R"({"name": "team/run-1/model"})", {"ckpt.v1.CheckpointService/GetRetention"});
  ASSERT_EQ(get.exit_code, 0) << get.err;
  EXPECT_NE(get.out.find(R"("keep_last": 3)"), std::string::npos) << get.out;

  auto info = Call("", {"ckpt.v1.CheckpointService/GetServerInfo"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find(R"("versions": "1")"), std::string::npos) << info.out;

  auto health = Call("", {"grpc.health.v1.Health/Check"});
  ASSERT_EQ(health.exit_code, 0) << health.err;
  EXPECT_NE(health.out.find(R"("status": "SERVING")"), std::string::npos) << health.out;

  // Errors come back with their gRPC code.
  auto missing = Call(R"({"name": "no/such"})", {"ckpt.v1.CheckpointService/ListVersions"});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.err.find("Code: NotFound"), std::string::npos) << missing.err;
}

// The README's commands against a server with a tokens file: reflection and
// health stay open, the checkpoint service wants `-H 'authorization: Bearer
// ...'`.
class GrpcurlTokenTest : public ::testing::Test {
 protected:
  static constexpr char kToken[] = "grpcurl-reader-6f1e2d3c4b5a";
  static constexpr char kAdmin[] = "grpcurl-admin-0a9b8c7d6e5f";

  void SetUp() override {
    const std::string tokens = dir_.path() + "/tokens";
    std::ofstream(tokens) << "reader " << kToken << " read team\n"
                          << "admin " << kAdmin << " admin *\n";
    auto server = testing::ServerProcess::Start(dir_.path() + "/db", {"--tokens-file", tokens});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client::ClientOptions options;
    options.token = kAdmin;
    auto client = client::RawClient::Connect(server_->address(), options);
    ASSERT_TRUE(client.ok());
    testing::TreeBuilder b;
    b.Dict(1).Tensor(std::string("hidden.weight"), DType::kFloat32, {2, 3}, 1);
    ASSERT_TRUE((*client)->Save("team/run-1/model", b.Input(), {}).ok());
    ASSERT_TRUE((*client)->Save("other/model", b.Input(), {}).ok());
  }

  // grpcurl -plaintext [-H 'authorization: Bearer TOKEN'] [-d DATA] ADDRESS ...
  testing::CommandResult Call(const std::string& token, const std::string& data,
                              std::vector<std::string> rest) {
    std::vector<std::string> args = {Grpcurl(), "-plaintext"};
    if (!token.empty()) args.insert(args.end(), {"-H", "authorization: Bearer " + token});
    if (!data.empty()) args.insert(args.end(), {"-d", data});
    args.push_back(server_->address());
    args.insert(args.end(), rest.begin(), rest.end());
    return testing::RunCommand(args);
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::ServerProcess> server_;
};

TEST_F(GrpcurlTokenTest, ReflectionAndHealthNeedNoToken) {
  auto list = Call("", "", {"list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("ckpt.v1.CheckpointService"), std::string::npos) << list.out;
  auto describe = Call("", "", {"describe", "ckpt.v1.CheckpointService"});
  ASSERT_EQ(describe.exit_code, 0) << describe.err;
  EXPECT_NE(describe.out.find("rpc GetManifest ( .ckpt.v1.GetManifestRequest )"), std::string::npos)
      << describe.out;
  auto health = Call("", "", {"grpc.health.v1.Health/Check"});
  ASSERT_EQ(health.exit_code, 0) << health.err;
  EXPECT_NE(health.out.find(R"("status": "SERVING")"), std::string::npos) << health.out;
}

TEST_F(GrpcurlTokenTest, CheckpointServiceNeedsTheBearerToken) {
  auto anonymous =
      Call("", R"({"prefix": "team/"})", {"ckpt.v1.CheckpointService/ListCheckpoints"});
  EXPECT_NE(anonymous.exit_code, 0);
  EXPECT_NE(anonymous.err.find("Code: Unauthenticated"), std::string::npos) << anonymous.err;
  EXPECT_NE(anonymous.err.find("missing bearer token"), std::string::npos) << anonymous.err;

  auto ls = Call(kToken, R"({"prefix": "team/"})", {"ckpt.v1.CheckpointService/ListCheckpoints"});
  ASSERT_EQ(ls.exit_code, 0) << ls.err;
  EXPECT_NE(ls.out.find(R"("name": "team/run-1/model")"), std::string::npos) << ls.out;
  // Only what the token may read is listed.
  auto all = Call(kToken, "", {"ckpt.v1.CheckpointService/ListCheckpoints"});
  ASSERT_EQ(all.exit_code, 0) << all.err;
  EXPECT_EQ(all.out.find("other/model"), std::string::npos) << all.out;

  auto manifest =
      Call(kToken, R"({"name": "team/run-1/model"})", {"ckpt.v1.CheckpointService/GetManifest"});
  ASSERT_EQ(manifest.exit_code, 0) << manifest.err;
  EXPECT_NE(manifest.out.find(R"("str_key": "hidden.weight")"), std::string::npos) << manifest.out;

  auto denied =
      Call(kToken, R"({"name": "other/model"})", {"ckpt.v1.CheckpointService/GetManifest"});
  EXPECT_NE(denied.exit_code, 0);
  EXPECT_NE(denied.err.find("Code: PermissionDenied"), std::string::npos) << denied.err;
  EXPECT_NE(denied.err.find("token 'reader' has no read right on 'other/model'"), std::string::npos)
      << denied.err;

  auto info = Call(kToken, "", {"ckpt.v1.CheckpointService/GetServerInfo"});
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find(R"("versions": "2")"), std::string::npos) << info.out;
}

}  // namespace
}  // namespace ckpt
