// An independent client: only the generated ckpt.v1 stub (no client
// library) against the real ckpt-server process, plus server reflection
// through the generated grpc.reflection.v1alpha stub.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <set>

#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"
#include "xxhash.h"

namespace ckpt {
namespace {

namespace refl = grpc::reflection::v1alpha;

// XXH3-128, big-endian high then low: the digest the protocol defines.
std::string DigestOf(const std::string& data) {
  XXH128_hash_t h = XXH3_128bits(data.data(), data.size());
  std::string out(16, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>(h.high64 >> (56 - 8 * i));
    out[8 + i] = static_cast<char>(h.low64 >> (56 - 8 * i));
  }
  return out;
}

class StubTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(); }

  void Start() {
    auto server = testing::ServerProcess::Start(dir_.path() + "/db");
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::CheckpointService::NewStub(channel_);
  }

  // Saves {"w": float32[n] of `data`} in one chunk; returns the version.
  uint64_t Save(const std::string& name, const std::string& data) {
    grpc::ClientContext context;
    auto stream = stub_->Save(&context);
    v1::SaveRequest req;
    v1::SaveResponse resp;
    req.mutable_begin()->set_name(name);
    EXPECT_TRUE(stream->Write(req));
    EXPECT_TRUE(stream->Read(&resp));
    EXPECT_TRUE(resp.has_accepted());
    EXPECT_GE(resp.accepted().chunk_size(), data.size());

    req.Clear();
    auto* nodes = req.mutable_nodes();
    nodes->add_nodes()->mutable_dict()->set_size(1);
    v1::Node* w = nodes->add_nodes();
    w->set_str_key("w");
    w->mutable_tensor()->set_dtype(v1::DTYPE_FLOAT32);
    w->mutable_tensor()->add_shape(static_cast<int64_t>(data.size() / 4));
    w->mutable_tensor()->set_device("cpu");
    w->mutable_tensor()->mutable_data()->set_size(data.size());
    w->mutable_tensor()->mutable_data()->set_chunk_size(resp.accepted().chunk_size());
    w->mutable_tensor()->mutable_data()->add_chunks(DigestOf(data));
    EXPECT_TRUE(stream->Write(req));
    EXPECT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.need().digests_size(), 1);

    req.Clear();
    v1::ChunkPiece* piece = req.mutable_chunks()->add_pieces();
    piece->set_digest(DigestOf(data));
    piece->set_data(data);
    EXPECT_TRUE(stream->Write(req));
    req.Clear();
    req.mutable_commit();
    EXPECT_TRUE(stream->Write(req));
    EXPECT_TRUE(stream->Read(&resp));
    EXPECT_TRUE(resp.has_result());
    stream->WritesDone();
    grpc::Status status = stream->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    return resp.result().version().version();
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CheckpointService::Stub> stub_;
};

TEST_F(StubTest, SaveManifestLoadRoundTripSurvivesRestart) {
  std::string data(4096, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + 3);
  ASSERT_EQ(Save("stub/model", data), 1u);

  // Restart the server process on the same directory.
  EXPECT_EQ(server_->Terminate(), 0);
  Start();

  grpc::ClientContext mc;
  v1::GetManifestRequest mreq;
  v1::GetManifestResponse mresp;
  mreq.set_name("stub/model");
  ASSERT_TRUE(stub_->GetManifest(&mc, mreq, &mresp).ok());
  EXPECT_EQ(mresp.version().version(), 1u);
  ASSERT_EQ(mresp.nodes_size(), 2);
  EXPECT_EQ(mresp.nodes(1).str_key(), "w");
  EXPECT_EQ(mresp.nodes(1).tensor().shape(0), 1024);
  EXPECT_EQ(mresp.nodes(1).tensor().data().chunks(0), DigestOf(data));

  grpc::ClientContext lc;
  v1::LoadRequest lreq;
  lreq.set_name("stub/model");
  auto reader = stub_->Load(&lc, lreq);
  v1::LoadResponse lresp;
  ASSERT_TRUE(reader->Read(&lresp));
  ASSERT_TRUE(lresp.has_header());
  EXPECT_EQ(lresp.header().data_bytes(), data.size());
  std::string got;
  while (reader->Read(&lresp)) {
    for (const auto& p : lresp.data().pieces()) got += p.data();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(got, data);
}

TEST_F(StubTest, ReflectionListsAndDescribesBothServices) {
  refl::ServerReflection::Stub reflection(channel_);
  grpc::ClientContext context;
  auto stream = reflection.ServerReflectionInfo(&context);
  refl::ServerReflectionRequest req;
  refl::ServerReflectionResponse resp;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  ASSERT_TRUE(stream->Read(&resp));
  std::set<std::string> services;
  for (const auto& s : resp.list_services_response().service()) services.insert(s.name());
  EXPECT_TRUE(services.count("ckpt.v1.CheckpointService"));
  EXPECT_TRUE(services.count("grpc.health.v1.Health"));

  // Every listed service resolves to a file descriptor that defines it.
  for (const std::string& service : services) {
    req.Clear();
    req.set_file_containing_symbol(service);
    ASSERT_TRUE(stream->Write(req));
    ASSERT_TRUE(stream->Read(&resp));
    ASSERT_TRUE(resp.has_file_descriptor_response())
        << service << ": " << resp.error_response().error_message();
    bool found = false;
    for (const std::string& raw : resp.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      ASSERT_TRUE(file.ParseFromString(raw));
      for (const auto& s : file.service()) {
        if (file.package() + "." + s.name() == service) found = true;
      }
    }
    EXPECT_TRUE(found) << service;
  }
  stream->WritesDone();
  stream->Finish();

  // And the health service answers.
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext hc;
  grpc::health::v1::HealthCheckRequest hreq;
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(health->Check(&hc, hreq, &hresp).ok());
  EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace ckpt
