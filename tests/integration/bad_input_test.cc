// Bad input through the generated stub: each case checks the exact status
// code, a useful message, and that nothing changed in the store.

#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "client/raw_client.h"
#include "server/server.h"
#include "server/service.h"
#include "storage/store.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

constexpr uint32_t kChunk = 64 << 10;

class BadInputTest : public testing::ServerTest {
 protected:
  void AdjustOptions(server::ServerOptions& options) override { options.chunk_size = kChunk; }

  void SetUp() override {
    ServerTest::SetUp();
    ASSERT_NE(client_, nullptr);
    channel_ = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
    stub_ = v1::CheckpointService::NewStub(channel_);
    // One committed checkpoint that every case must leave untouched.
    baseline_ = testing::StateDict(3, 1000, 1);
    ASSERT_TRUE(client_->Save("base/model", baseline_.Input(), {}).ok());
    stats_before_ = client_->GetServerInfo()->stats;
  }

  void TearDown() override {
    if (!server_) return;
    // Nothing changed: same totals, and the baseline loads identically.
    auto stats = client_->GetServerInfo();
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->stats.versions, stats_before_.versions);
    EXPECT_EQ(stats->stats.chunks, stats_before_.chunks);
    EXPECT_EQ(stats->stats.checkpoints, stats_before_.checkpoints);
    auto loaded = client_->Load("base/model", {});
    ASSERT_TRUE(loaded.ok());
    for (size_t i = 0; i < baseline_.tree().size(); ++i) {
      EXPECT_EQ(loaded->data[i], baseline_.data(i));
    }
  }

  // A scripted save: Begin, one NodeBatch, the requested chunks (as
  // `send_chunks` decides), then SaveCommit unless `commit` is false.
  struct Script {
    v1::SaveBegin begin;
    std::vector<v1::Node> nodes;
    // Called with the digests the server asked for; returns the batches to send.
    std::function<std::vector<v1::ChunkBatch>(const std::vector<std::string>&)> chunks;
    bool commit = true;
    bool cancel_before_commit = false;
  };

  grpc::Status Run(const Script& script) {
    grpc::ClientContext context;
    auto stream = stub_->Save(&context);
    v1::SaveRequest request;
    v1::SaveResponse response;
    *request.mutable_begin() = script.begin;
    if (!stream->Write(request) || !stream->Read(&response)) return stream->Finish();
    request.Clear();
    for (const auto& n : script.nodes) *request.mutable_nodes()->add_nodes() = n;
    if (!stream->Write(request) || !stream->Read(&response)) return stream->Finish();
    std::vector<std::string> need(response.need().digests().begin(),
                                  response.need().digests().end());
    if (script.chunks) {
      for (auto& batch : script.chunks(need)) {
        request.Clear();
        *request.mutable_chunks() = batch;
        if (!stream->Write(request)) return stream->Finish();
      }
    }
    if (script.cancel_before_commit) {
      context.TryCancel();
      return stream->Finish();
    }
    if (script.commit) {
      request.Clear();
      request.mutable_commit();
      if (!stream->Write(request)) return stream->Finish();
      stream->Read(&response);
    }
    stream->WritesDone();
    while (stream->Read(&response)) {
    }
    return stream->Finish();
  }

  static v1::Node DictNode(uint32_t size) {
    v1::Node n;
    n.mutable_dict()->set_size(size);
    return n;
  }

  // A float32 tensor node with `data` as its one chunk.
  static v1::Node TensorNode(const std::string& key, std::vector<int64_t> shape,
                             const std::string& data, v1::DType dtype = v1::DTYPE_FLOAT32) {
    v1::Node n;
    n.set_str_key(key);
    v1::TensorMeta* t = n.mutable_tensor();
    t->set_dtype(dtype);
    for (int64_t d : shape) t->add_shape(d);
    t->set_device("cpu");
    t->mutable_data()->set_size(data.size());
    if (!data.empty()) {
      t->mutable_data()->set_chunk_size(kChunk);
      t->mutable_data()->add_chunks(std::string(Digest::Of(data).view()));
    }
    return n;
  }

  // Sends each requested chunk whole, from `data`.
  static std::function<std::vector<v1::ChunkBatch>(const std::vector<std::string>&)> SendAll(
      std::string data) {
    return [data](const std::vector<std::string>& need) {
      std::vector<v1::ChunkBatch> out(1);
      for (const auto& d : need) {
        auto* piece = out[0].add_pieces();
        piece->set_digest(d);
        piece->set_data(data);
      }
      return out;
    };
  }

  Script OneTensor(const std::string& name, std::vector<int64_t> shape, const std::string& data) {
    Script s;
    s.begin.set_name(name);
    s.nodes = {DictNode(1), TensorNode("w", std::move(shape), data)};
    s.chunks = SendAll(data);
    return s;
  }

  void ExpectNoVersion(const std::string& name) {
    EXPECT_EQ(client_->ListVersions(name).status().code(), absl::StatusCode::kNotFound);
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CheckpointService::Stub> stub_;
  testing::TreeBuilder baseline_;
  StoreStats stats_before_;
};

#define EXPECT_STATUS(status, code, text)                                     \
  do {                                                                        \
    grpc::Status s_ = (status);                                               \
    EXPECT_EQ(s_.error_code(), grpc::StatusCode::code) << s_.error_message(); \
    EXPECT_NE(s_.error_message().find(text), std::string::npos)               \
        << "message: " << s_.error_message();                                 \
  } while (0)

TEST_F(BadInputTest, UnknownNameVersionTagAreNotFound) {
  grpc::ClientContext c1;
  v1::GetManifestRequest m;
  v1::GetManifestResponse mr;
  m.set_name("no/such");
  EXPECT_STATUS(stub_->GetManifest(&c1, m, &mr), NOT_FOUND, "'no/such'");
  grpc::ClientContext c2;
  m.set_name("base/model");
  m.set_version(9);
  EXPECT_STATUS(stub_->GetManifest(&c2, m, &mr), NOT_FOUND, "version 9");
  grpc::ClientContext c3;
  m.set_version(0);
  m.set_tag("nope");
  EXPECT_STATUS(stub_->GetManifest(&c3, m, &mr), NOT_FOUND, "tag 'nope'");
  grpc::ClientContext c4;
  v1::SetTagRequest st;
  v1::SetTagResponse str;
  st.set_name("base/model");
  st.set_tag("best");
  st.set_version(7);
  EXPECT_STATUS(stub_->SetTag(&c4, st, &str), NOT_FOUND, "version 7");
  grpc::ClientContext c5;
  v1::DeleteVersionRequest dv;
  v1::DeleteVersionResponse dvr;
  dv.set_name("base/model");
  dv.set_version(5);
  EXPECT_STATUS(stub_->DeleteVersion(&c5, dv, &dvr), NOT_FOUND, "version 5");
  // Load of an unknown name: the stream ends with NOT_FOUND.
  grpc::ClientContext c6;
  v1::LoadRequest lr;
  lr.set_name("no/such");
  auto reader = stub_->Load(&c6, lr);
  v1::LoadResponse resp;
  EXPECT_FALSE(reader->Read(&resp));
  EXPECT_STATUS(reader->Finish(), NOT_FOUND, "'no/such'");
}

TEST_F(BadInputTest, InvalidNamesAndPatterns) {
  for (const std::string& name :
       {std::string(""), std::string(".."), std::string("a/../b"), std::string("a\x07z"),
        std::string(300, 'n'), std::string("a//b")}) {
    Script s = OneTensor(name, {1}, std::string(4, 'x'));
    EXPECT_STATUS(Run(s), INVALID_ARGUMENT, "invalid name");
    grpc::ClientContext c;
    v1::ListVersionsRequest r;
    v1::ListVersionsResponse rr;
    r.set_name(name);
    EXPECT_STATUS(stub_->ListVersions(&c, r, &rr), INVALID_ARGUMENT, "invalid name");
  }
  for (const std::string& pattern : {std::string("a[b"), std::string(""), std::string("x\\")}) {
    grpc::ClientContext c;
    v1::LoadRequest lr;
    lr.set_name("base/model");
    lr.add_patterns(pattern);
    auto reader = stub_->Load(&c, lr);
    v1::LoadResponse resp;
    EXPECT_FALSE(reader->Read(&resp));
    EXPECT_STATUS(reader->Finish(), INVALID_ARGUMENT, "invalid pattern");
  }
  grpc::ClientContext c;
  v1::SetTagRequest st;
  v1::SetTagResponse str;
  st.set_name("base/model");
  st.set_tag("12");
  st.set_version(1);
  EXPECT_STATUS(stub_->SetTag(&c, st, &str), INVALID_ARGUMENT, "invalid tag");
}

TEST_F(BadInputTest, ShapeThatDoesNotMatchTheBytes) {
  // float32 [3] is 12 bytes; 8 are declared.
  Script s = OneTensor("bad/shape", {3}, std::string(8, 'x'));
  EXPECT_STATUS(Run(s), INVALID_ARGUMENT, "dtype float32 x shape [3] is 12 bytes");
  ExpectNoVersion("bad/shape");
}

TEST_F(BadInputTest, NegativeDimension) {
  Script s = OneTensor("bad/neg", {-2, 2}, std::string(16, 'x'));
  EXPECT_STATUS(Run(s), INVALID_ARGUMENT, "negative dimension -2");
  ExpectNoVersion("bad/neg");
}

TEST_F(BadInputTest, ElementCountOverflow) {
  Script s = OneTensor("bad/overflow", {int64_t{1} << 40, int64_t{1} << 40}, std::string(16, 'x'));
  EXPECT_STATUS(Run(s), INVALID_ARGUMENT, "overflows");
  ExpectNoVersion("bad/overflow");
}

TEST_F(BadInputTest, DuplicateDictKeys) {
  Script s;
  s.begin.set_name("bad/dup");
  std::string data(4, 'x');
  s.nodes = {DictNode(2), TensorNode("w", {1}, data), TensorNode("w", {1}, data)};
  s.chunks = SendAll(data);
  EXPECT_STATUS(Run(s), INVALID_ARGUMENT, "duplicate dict key 'w'");
  ExpectNoVersion("bad/dup");
}

TEST_F(BadInputTest, BytesBeyondWhatWasDeclared) {
  Script s = OneTensor("bad/long", {2}, std::string(8, 'x'));
  s.chunks = SendAll(std::string(12, 'x'));
  EXPECT_STATUS(Run(s), INVALID_ARGUMENT, "beyond the 8 declared");
  ExpectNoVersion("bad/long");
}

TEST_F(BadInputTest, DigestMismatch) {
  Script s = OneTensor("bad/digest", {2}, std::string(8, 'x'));
  s.chunks = SendAll(std::string(8, 'y'));  // right size, wrong content
  EXPECT_STATUS(Run(s), INVALID_ARGUMENT, "digest mismatch");
  ExpectNoVersion("bad/digest");
}

TEST_F(BadInputTest, ChunkNotRequested) {
  Script s = OneTensor("bad/unasked", {2}, std::string(8, 'x'));
  s.chunks = [](const std::vector<std::string>&) {
    std::vector<v1::ChunkBatch> out(1);
    auto* piece = out[0].add_pieces();
    std::string other(8, 'z');
    piece->set_digest(std::string(Digest::Of(other).view()));
    piece->set_data(other);
    return out;
  };
  EXPECT_STATUS(Run(s), INVALID_ARGUMENT, "was not requested");
  ExpectNoVersion("bad/unasked");
}

TEST_F(BadInputTest, CommitWithChunksMissing) {
  Script s = OneTensor("bad/missing", {2}, std::string(8, 'x'));
  s.chunks = nullptr;
  EXPECT_STATUS(Run(s), INVALID_ARGUMENT, "never sent");
  ExpectNoVersion("bad/missing");
}

TEST_F(BadInputTest, StreamEndingBeforeCommitCreatesNothing) {
  Script s = OneTensor("bad/eof", {2}, std::string(8, 'x'));
  s.commit = false;
  EXPECT_STATUS(Run(s), ABORTED, "ended before SaveCommit");
  ExpectNoVersion("bad/eof");
}

TEST_F(BadInputTest, CancelledStreamCreatesNothing) {
  Script s = OneTensor("bad/cancel", {2}, std::string(8, 'x'));
  s.cancel_before_commit = true;
  EXPECT_EQ(Run(s).error_code(), grpc::StatusCode::CANCELLED);
  ExpectNoVersion("bad/cancel");
}

TEST_F(BadInputTest, MessagesOutOfOrder) {
  grpc::ClientContext context;
  auto stream = stub_->Save(&context);
  v1::SaveRequest request;
  request.mutable_nodes()->add_nodes()->mutable_dict();
  stream->Write(request);
  stream->WritesDone();
  v1::SaveResponse response;
  while (stream->Read(&response)) {
  }
  EXPECT_STATUS(stream->Finish(), FAILED_PRECONDITION, "SaveBegin must come first");
}

TEST_F(BadInputTest, OversizeMessageIsRejected) {
  grpc::ClientContext context;
  auto stream = stub_->Save(&context);
  v1::SaveRequest request;
  request.mutable_begin()->set_name("bad/huge");
  (*request.mutable_begin()->mutable_metadata())["blob"] = std::string(5 << 20, 'x');
  stream->Write(request);
  stream->WritesDone();
  v1::SaveResponse response;
  while (stream->Read(&response)) {
  }
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ExpectNoVersion("bad/huge");
}

// Load is served raw: bytes that are no LoadRequest are INVALID_ARGUMENT
// with the message's name, not a transport error.
TEST_F(BadInputTest, MalformedLoadRequestIsInvalidArgument) {
  grpc::GenericStub generic(channel_);
  const std::string garbage = "\x0a\xff\xff\xff\xff\x0f";  // field 1, length past the end
  grpc::Slice slice(garbage.data(), garbage.size());
  grpc::ByteBuffer request(&slice, 1);
  grpc::ClientContext context;
  grpc::CompletionQueue cq;
  auto call = generic.PrepareCall(&context, "/ckpt.v1.CheckpointService/Load", &cq);
  void* tag = nullptr;
  bool ok = false;
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  call->Write(request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  call->WritesDone(reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(4));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_FALSE(ok);  // no message: the call ends with an error
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
  EXPECT_STATUS(status, INVALID_ARGUMENT, "malformed LoadRequest");
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

// A call through the generic stub with raw request bytes: the status.
grpc::Status RawCall(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                     const std::string& bytes) {
  grpc::GenericStub generic(channel);
  grpc::Slice slice(bytes.data(), bytes.size());
  grpc::ByteBuffer request(&slice, 1);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::CompletionQueue cq;
  auto call = generic.PrepareCall(&context, "/ckpt.v1.CheckpointService/" + method, &cq);
  void* tag = nullptr;
  bool ok = false;
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  call->Write(request, reinterpret_cast<void*>(2));
  cq.Next(&tag, &ok);
  call->WritesDone(reinterpret_cast<void*>(3));
  cq.Next(&tag, &ok);
  grpc::ByteBuffer response;
  do {
    call->Read(&response, reinterpret_cast<void*>(4));
    cq.Next(&tag, &ok);
  } while (ok);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

// Every method parses its own requests: bytes that are no valid message are
// INVALID_ARGUMENT naming the message (not UNIMPLEMENTED, and for Save not
// ABORTED, which clients retry).
TEST_F(BadInputTest, UndecodableMessagesAreInvalidArgumentEverywhere) {
  const std::string garbage = "\x0a\xff\xff\xff\xff\x0f";  // field 1, length past the end
  for (const char* method :
       {"Save", "Load", "ListCheckpoints", "ListVersions", "GetManifest", "DeleteVersion", "SetTag",
        "DeleteTag", "GetServerInfo", "GetUsage", "GarbageCollect", "SetRetention", "GetRetention",
        "Prune", "Backup", "Diff"}) {
    SCOPED_TRACE(method);
    grpc::Status status = RawCall(channel_, method, garbage);
    EXPECT_STATUS(status, INVALID_ARGUMENT, absl::StrCat("malformed ", method, "Request"));
  }
}

// One rule for tags everywhere: "." and ".." are no tags, and "latest" is
// refused with the same message by SetTag, DeleteTag and a save's tags.
TEST_F(BadInputTest, TagRulesAreTheSameEverywhere) {
  for (const std::string tag : {"..", ".", "-x"}) {
    grpc::ClientContext context;
    v1::SetTagRequest request;
    request.set_name("base/model");
    request.set_version(1);
    request.set_tag(tag);
    v1::SetTagResponse response;
    EXPECT_STATUS(stub_->SetTag(&context, request, &response), INVALID_ARGUMENT,
                  "must start with a letter, a digit or '_'");
  }
  const std::string latest = "tag 'latest' is automatic";
  grpc::ClientContext c1;
  v1::SetTagRequest set;
  set.set_name("base/model");
  set.set_version(1);
  set.set_tag("latest");
  v1::SetTagResponse set_response;
  EXPECT_STATUS(stub_->SetTag(&c1, set, &set_response), INVALID_ARGUMENT, latest);
  grpc::ClientContext c2;
  v1::DeleteTagRequest del;
  del.set_name("base/model");
  del.set_tag("latest");
  v1::DeleteTagResponse del_response;
  EXPECT_STATUS(stub_->DeleteTag(&c2, del, &del_response), INVALID_ARGUMENT, latest);
  Script save = OneTensor("tags/model", {4}, std::string(16, 'a'));
  save.begin.add_tags("latest");
  EXPECT_STATUS(Run(save), INVALID_ARGUMENT, latest);
  save.begin.clear_tags();
  save.begin.add_tags("..");
  EXPECT_STATUS(Run(save), INVALID_ARGUMENT, "must start with a letter");
  ExpectNoVersion("tags/model");
}

// A version's metadata is bounded in total, and ListVersions pages, so that
// no name can make its listing exceed a message.
TEST_F(BadInputTest, MetadataIsBoundedAndListVersionsPages) {
  Script save = OneTensor("meta/model", {4}, std::string(16, 'm'));
  for (int i = 0; i < 300; ++i) {
    (*save.begin.mutable_metadata())[absl::StrCat("key", i)] = std::string(1000, 'v');
  }
  EXPECT_STATUS(Run(save), INVALID_ARGUMENT, "bytes in all (max 262144)");
  ExpectNoVersion("meta/model");

  // 24 versions with ~250 KB of metadata each: 6 MB in all.
  client::SaveOptions options;
  for (int i = 0; i < 250; ++i) options.metadata[absl::StrCat("key", i)] = std::string(1000, 'v');
  testing::TreeBuilder b = testing::StateDict(1, 4, 5);
  for (int v = 0; v < 24; ++v) ASSERT_TRUE(client_->Save("meta/listed", b.Input(), options).ok());
  auto versions = client_->ListVersions("meta/listed");
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->size(), 24u);
  for (size_t i = 0; i < versions->size(); ++i) {
    EXPECT_EQ((*versions)[i].version, i + 1);
    EXPECT_EQ((*versions)[i].metadata.size(), 250u);
  }
  EXPECT_THAT((*versions).back().tags, ::testing::ElementsAre("latest"));
  // One page stays under the message limit and says where to go on.
  grpc::ClientContext context;
  v1::ListVersionsRequest request;
  request.set_name("meta/listed");
  v1::ListVersionsResponse response;
  ASSERT_TRUE(stub_->ListVersions(&context, request, &response).ok());
  EXPECT_LT(response.versions_size(), 24);
  EXPECT_EQ(response.next_page_token(), absl::StrCat(response.versions_size()));
  EXPECT_LT(response.ByteSizeLong(), 4u << 20);
  // Clean up: the fixture checks the totals.
  for (int v = 1; v <= 24; ++v) ASSERT_TRUE(client_->DeleteVersion("meta/listed", v, true).ok());
  ASSERT_TRUE(client_->GarbageCollect().ok());
}

// Errors never name the store's directory.
TEST_F(BadInputTest, ClientsNeverSeeTheStorePath) {
  server::ServerOptions options;
  options.store.path = dir_.path() + "/other";
  options.store.reserved_disk_bytes = 0;
  auto store = storage::Store::Open(options.store);
  ASSERT_TRUE(store.ok()) << store.status();
  server::CheckpointService service(store->get(), options);
  const std::string dir = options.store.path;
  grpc::Status s = service.ToClient(absl::InternalError(
      absl::StrCat("IO error: While appending to file: ", dir, "/000012.log: Input/output error")));
  EXPECT_EQ(s.error_message().find(dir_.path()), std::string::npos) << s.error_message();
  EXPECT_NE(s.error_message().find("<data-dir>/000012.log"), std::string::npos)
      << s.error_message();
}

}  // namespace
}  // namespace ckpt
