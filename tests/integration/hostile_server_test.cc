// The client core against a hostile server: a fake CheckpointService whose
// Load streams break the protocol (pieces out of order, out of range, a
// node's data skipped, a tree whose sizes disagree with its shapes, a stream
// cut short). The client must refuse each with a precise status, never
// write past what the tree declares, and load a well-formed stream.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "client/raw_client.h"

namespace ckpt {
namespace {

// Sends the script set last in order, then OK. Each call sends its own
// copy: a client that refuses a message returns while the call may still be
// writing, and the next case sets a new script.
class ScriptedLoad final : public v1::CheckpointService::Service {
 public:
  grpc::Status Load(grpc::ServerContext*, const v1::LoadRequest*,
                    grpc::ServerWriter<v1::LoadResponse>* writer) override {
    std::vector<v1::LoadResponse> messages;
    {
      std::lock_guard<std::mutex> lock(mu_);
      messages = script_;
    }
    for (const v1::LoadResponse& message : messages) writer->Write(message);
    return grpc::Status::OK;
  }
  void set_script(std::vector<v1::LoadResponse> script) {
    std::lock_guard<std::mutex> lock(mu_);
    script_ = std::move(script);
  }

 private:
  std::mutex mu_;
  std::vector<v1::LoadResponse> script_;
};

v1::Node TensorNode(const std::string& key, std::vector<int64_t> shape, uint64_t size) {
  v1::Node node;
  node.set_str_key(key);
  v1::TensorMeta* t = node.mutable_tensor();
  t->set_dtype(v1::DTYPE_FLOAT32);
  for (int64_t d : shape) t->add_shape(d);
  t->set_device("cpu");
  t->mutable_data()->set_size(size);
  if (size > 0) {
    t->mutable_data()->set_chunk_size(static_cast<uint32_t>(size));
    t->mutable_data()->add_chunks(std::string(16, 'd'));
  }
  return node;
}

// A header and the tree {a: float32[2], b: float32[0], c: float32[1]}
// (node sizes 8, 0, 4: 12 data bytes).
std::vector<v1::LoadResponse> Tree(uint64_t size_of_a = 8) {
  std::vector<v1::LoadResponse> out(2);
  v1::LoadHeader* header = out[0].mutable_header();
  header->mutable_version()->set_name("team/run");
  header->mutable_version()->set_version(1);
  header->set_num_nodes(4);
  header->set_data_bytes(size_of_a + 4);
  v1::NodeBatch* nodes = out[1].mutable_nodes();
  nodes->add_nodes()->mutable_dict()->set_size(3);
  *nodes->add_nodes() = TensorNode("a", {2}, size_of_a);
  *nodes->add_nodes() = TensorNode("b", {0}, 0);
  *nodes->add_nodes() = TensorNode("c", {1}, 4);
  return out;
}

v1::LoadResponse Pieces(std::vector<std::tuple<uint32_t, uint64_t, std::string>> pieces) {
  v1::LoadResponse out;
  for (const auto& [node, offset, data] : pieces) {
    v1::DataPiece* p = out.mutable_data()->add_pieces();
    p->set_node(node);
    p->set_offset(offset);
    p->set_data(data);
  }
  return out;
}

class HostileServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    auto client = client::RawClient::Connect("127.0.0.1:" + std::to_string(port), {});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }
  void TearDown() override {
    client_.reset();
    if (server_) server_->Shutdown();
  }

  absl::StatusOr<client::LoadedValue> LoadWith(std::vector<v1::LoadResponse> script) {
    service_.set_script(std::move(script));
    return client_->Load("team/run", {});
  }

  ScriptedLoad service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<client::RawClient> client_;
};

TEST_F(HostileServerTest, AWellFormedStreamLoads) {
  auto script = Tree();
  script.push_back(Pieces({{1, 0, "abcd"}, {1, 4, "efgh"}}));
  script.push_back(Pieces({{3, 0, "ijkl"}}));
  auto loaded = LoadWith(script);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->data.size(), 4u);
  EXPECT_EQ(loaded->data[1], "abcdefgh");
  EXPECT_EQ(loaded->data[2], "");
  EXPECT_EQ(loaded->data[3], "ijkl");
}

// A piece arrives in the parts gRPC received it in: a sink that takes parts
// gets them as they lie (consecutive offsets), any other sink each piece
// whole, and both the same bytes.
TEST_F(HostileServerTest, PiecesReachASinkWholeUnlessItTakesParts) {
  constexpr uint64_t kPiece = 1 << 20;
  std::vector<v1::LoadResponse> script(2);
  v1::LoadHeader* header = script[0].mutable_header();
  header->mutable_version()->set_name("team/run");
  header->mutable_version()->set_version(1);
  header->set_num_nodes(2);
  header->set_data_bytes(3 * kPiece);
  v1::NodeBatch* nodes = script[1].mutable_nodes();
  nodes->add_nodes()->mutable_dict()->set_size(1);
  *nodes->add_nodes() = TensorNode("a", {3 * kPiece / 4}, 3 * kPiece);
  std::string bytes(3 * kPiece, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 + i / 4096);
  script.push_back(Pieces({{1, 0, bytes.substr(0, kPiece)},
                           {1, kPiece, bytes.substr(kPiece, kPiece)},
                           {1, 2 * kPiece, bytes.substr(2 * kPiece)}}));
  service_.set_script(script);

  struct Recorder : client::LoadSink {
    bool parts = false;
    std::string data;
    std::vector<std::pair<uint64_t, size_t>> calls;  // (offset, size)
    absl::Status OnTree(const VersionInfo&, const ckpt::Tree&) override { return absl::OkStatus(); }
    absl::Status OnData(size_t node, uint64_t offset, absl::string_view b) override {
      EXPECT_EQ(node, 1u);
      EXPECT_EQ(offset, data.size());
      calls.emplace_back(offset, b.size());
      data.append(b.data(), b.size());
      return absl::OkStatus();
    }
    bool AcceptsPartialPieces() const override { return parts; }
  };
  Recorder whole;
  ASSERT_TRUE(client_->Load("team/run", {}, &whole).ok());
  EXPECT_EQ(whole.data, bytes);
  EXPECT_EQ(whole.calls, (std::vector<std::pair<uint64_t, size_t>>{
                             {0, kPiece}, {kPiece, kPiece}, {2 * kPiece, kPiece}}));
  Recorder parts;
  parts.parts = true;
  ASSERT_TRUE(client_->Load("team/run", {}, &parts).ok());
  EXPECT_EQ(parts.data, bytes);
  EXPECT_GT(parts.calls.size(), 3u);  // the message did arrive in parts
}

// `tree` (Tree(), as built) followed by `data`.
std::vector<v1::LoadResponse> Script(std::vector<v1::LoadResponse> tree,
                                     std::vector<v1::LoadResponse> data) {
  tree.insert(tree.end(), data.begin(), data.end());
  return tree;
}

TEST_F(HostileServerTest, BrokenStreamsAreRefusedPrecisely) {
  struct Case {
    const char* what;
    std::vector<v1::LoadResponse> script;
    absl::StatusCode code;
    const char* message;
  };
  std::vector<v1::LoadResponse> cut_in_tree = Tree();
  cut_in_tree.pop_back();  // the header announces 4 nodes; none follow
  // The header announces 8 bytes of the tree's 12: a client stopping there
  // would hand back 'c' unfilled.
  std::vector<v1::LoadResponse> short_header = Tree();
  short_header[0].mutable_header()->set_data_bytes(8);
  const std::vector<Case> cases = {
      {"a node before the last one was complete",
       Script(Tree(), {Pieces({{1, 0, "abcd"}, {3, 0, "ijkl"}})}), absl::StatusCode::kInternal,
       "load stream pieces out of order"},
      {"a node after its successor", Script(Tree(), {Pieces({{3, 0, "ijkl"}, {1, 0, "abcdefgh"}})}),
       absl::StatusCode::kInternal, "load stream skipped a node's data"},
      {"a gap in a node's bytes", Script(Tree(), {Pieces({{1, 0, "abcd"}, {1, 5, "fgh"}})}),
       absl::StatusCode::kInternal, "load stream piece out of range"},
      {"bytes past a node's end", Script(Tree(), {Pieces({{1, 0, "abcdefghXXXXXXXX"}})}),
       absl::StatusCode::kInternal, "load stream piece out of range"},
      {"a node that does not exist", Script(Tree(), {Pieces({{1, 0, "abcdefgh"}, {9, 0, "ijkl"}})}),
       absl::StatusCode::kInternal, "load stream pieces out of order"},
      {"no data message at all", Tree(), absl::StatusCode::kUnavailable,
       "load stream ended in the data"},
      {"a stream cut in the tree", cut_in_tree, absl::StatusCode::kUnavailable,
       "load stream ended in the tree"},
      {"a header announcing less data than the tree holds",
       Script(short_header, {Pieces({{1, 0, "abcdefgh"}})}), absl::StatusCode::kInternal,
       "load header announces 8 data bytes, the tree holds 12"},
      // float32[2] is 8 bytes; the tree says 64: a client trusting it would
      // write 56 bytes past the tensor.
      {"a tree whose size disagrees with its shape",
       Script(Tree(/*size_of_a=*/64), {Pieces({{1, 0, std::string(64, 'x')}, {3, 0, "ijkl"}})}),
       absl::StatusCode::kInvalidArgument, "bytes but the data declares 64"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto loaded = LoadWith(c.script);
    ASSERT_FALSE(loaded.ok());
    EXPECT_EQ(loaded.status().code(), c.code) << loaded.status();
    EXPECT_NE(loaded.status().message().find(c.message), std::string::npos) << loaded.status();
  }
}

}  // namespace
}  // namespace ckpt
