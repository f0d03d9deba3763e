// Operations: the Prometheus endpoint scraped over HTTP (numbers move with
// traffic), one structured log line per RPC, the stream limit, the idle
// stream timeout and namespace quotas through the service.

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "client/raw_client.h"
#include "server/server.h"
#include "tests/testing/http.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

using client::RawClient;
using ::testing::HasSubstr;
using testing::MetricValue;
using ::testing::Not;
using ::testing::StartsWith;

// Each test starts its server with its own options (Start).
class OpsTest : public testing::ServerTest {
 protected:
  void SetUp() override {}
  void AdjustOptions(server::ServerOptions& options) override {
    options.metrics_listen = "127.0.0.1:0";
  }
  void Start(const std::function<void(server::ServerOptions&)>& adjust = {}) {
    StartServer(adjust);
    ASSERT_NE(client_, nullptr);
    channel_ = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
    stub_ = v1::CheckpointService::NewStub(channel_);
  }

  // GET /metrics over HTTP.
  std::string Scrape() {
    auto body = testing::HttpGet(server_->metrics_port(), "/metrics");
    EXPECT_TRUE(body.ok()) << body.status();
    return body.value_or("");
  }
  double Metric(const std::string& series) { return MetricValue(Scrape(), series); }

  // Polls the endpoint until `series` has `value` (at most 30 s).
  bool WaitForMetric(const std::string& series, double value) {
    return testing::WaitForMetric(server_->metrics_port(), series, value);
  }

  using SaveStream = grpc::ClientReaderWriter<v1::SaveRequest, v1::SaveResponse>;
  // Opens a Save stream of `name` and waits for SaveAccepted.
  std::unique_ptr<SaveStream> OpenSave(grpc::ClientContext* context, const std::string& name) {
    auto stream = stub_->Save(context);
    v1::SaveRequest begin;
    begin.mutable_begin()->set_name(name);
    EXPECT_TRUE(stream->Write(begin));
    v1::SaveResponse accepted;
    EXPECT_TRUE(stream->Read(&accepted));
    EXPECT_TRUE(accepted.has_accepted());
    return stream;
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CheckpointService::Stub> stub_;
};

constexpr char kSaveOk[] = R"(ckpt_requests_total{code="OK",method="Save"})";
constexpr char kLoadOk[] = R"(ckpt_requests_total{code="OK",method="Load"})";
constexpr char kReceived[] = R"(ckpt_received_bytes_total{method="Save"})";
constexpr char kSent[] = R"(ckpt_sent_bytes_total{method="Load"})";
constexpr char kSaveStreams[] = R"(ckpt_streams_in_flight{method="Save"})";
constexpr char kLoadStreams[] = R"(ckpt_streams_in_flight{method="Load"})";

TEST_F(OpsTest, MetricsMoveWithTraffic) {
  Start();
  std::string scrape = Scrape();
  EXPECT_THAT(scrape, HasSubstr("# TYPE ckpt_streams_in_flight gauge"));
  EXPECT_EQ(MetricValue(scrape, kReceived), 0);
  EXPECT_EQ(MetricValue(scrape, kSent), 0);
  EXPECT_EQ(MetricValue(scrape, kSaveStreams), 0);
  EXPECT_EQ(MetricValue(scrape, "ckpt_stored_bytes"), 0);
  EXPECT_EQ(MetricValue(scrape, "ckpt_dedup_ratio"), 1);

  auto tree = testing::StateDict(4, 10000, 7);  // 4 float32 tensors of 40000 bytes
  const double bytes = 4 * 40000;
  ASSERT_TRUE(client_->Save("team/a", tree.Input(), {}).ok());
  scrape = Scrape();
  EXPECT_THAT(scrape, HasSubstr("# TYPE ckpt_requests_total counter"));
  EXPECT_THAT(scrape, HasSubstr("# TYPE ckpt_request_duration_seconds histogram"));
  EXPECT_EQ(MetricValue(scrape, kSaveOk), 1);
  EXPECT_EQ(MetricValue(scrape, kReceived), bytes);
  EXPECT_EQ(MetricValue(scrape, "ckpt_saved_logical_bytes_total"), bytes);
  EXPECT_EQ(MetricValue(scrape, R"(ckpt_request_duration_seconds_count{method="Save"})"), 1);
  EXPECT_GT(MetricValue(scrape, R"(ckpt_request_duration_seconds_sum{method="Save"})"), 0);
  EXPECT_EQ(MetricValue(scrape, "ckpt_stored_bytes"), bytes);
  EXPECT_EQ(MetricValue(scrape, "ckpt_versions"), 1);
  EXPECT_EQ(MetricValue(scrape, "ckpt_dedup_ratio"), 1);

  // The same tensors under another name: nothing crosses the wire, the
  // logical bytes double, the dedup ratio is 2.
  ASSERT_TRUE(client_->Save("team/b", tree.Input(), {}).ok());
  scrape = Scrape();
  EXPECT_EQ(MetricValue(scrape, kSaveOk), 2);
  EXPECT_EQ(MetricValue(scrape, kReceived), bytes);
  EXPECT_EQ(MetricValue(scrape, "ckpt_saved_logical_bytes_total"), 2 * bytes);
  EXPECT_EQ(MetricValue(scrape, "ckpt_logical_bytes"), 2 * bytes);
  EXPECT_EQ(MetricValue(scrape, "ckpt_stored_bytes"), bytes);
  EXPECT_EQ(MetricValue(scrape, "ckpt_dedup_ratio"), 2);

  ASSERT_TRUE(client_->Load("team/a", {}).ok());
  scrape = Scrape();
  EXPECT_EQ(MetricValue(scrape, kLoadOk), 1);
  EXPECT_EQ(MetricValue(scrape, kSent), bytes);

  // Errors count under their code.
  EXPECT_EQ(client_->ListVersions("team/missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Metric(R"(ckpt_requests_total{code="NOT_FOUND",method="ListVersions"})"), 1);

  // An open stream shows, and goes away when it ends.
  {
    grpc::ClientContext context;
    auto stream = OpenSave(&context, "team/c");
    EXPECT_EQ(Metric(kSaveStreams), 1);
    stream->WritesDone();
    grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::ABORTED);
  }
  EXPECT_TRUE(WaitForMetric(kSaveStreams, 0));
  EXPECT_TRUE(WaitForMetric(R"(ckpt_requests_total{code="ABORTED",method="Save"})", 1));
  // The same text in-process.
  EXPECT_EQ(MetricValue(server_->ScrapeMetrics(), kSaveOk), 2);
}

TEST_F(OpsTest, StreamLimitRefusesTheStreamsBeyondIt) {
  Start([](server::ServerOptions& o) { o.max_streams = 1; });
  grpc::ClientContext first_context;
  auto first = OpenSave(&first_context, "team/a");

  const std::string message =
      "too many streams: 1 Save and Load streams are open (--max-streams); retry later";
  auto tree = testing::StateDict(1, 100, 1);
  auto save = client_->Save("team/b", tree.Input(), {});
  EXPECT_EQ(save.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(save.status().message(), message);
  auto load = client_->Load("team/a", {});
  EXPECT_EQ(load.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(load.status().message(), message);
  // Unary calls are not streams.
  EXPECT_TRUE(client_->ListCheckpoints("").ok());

  first->WritesDone();
  EXPECT_EQ(first->Finish().error_code(), grpc::StatusCode::ABORTED);
  ASSERT_TRUE(WaitForMetric(kSaveStreams, 0));
  EXPECT_TRUE(client_->Save("team/b", tree.Input(), {}).ok());
  EXPECT_EQ(Metric(R"(ckpt_requests_total{code="RESOURCE_EXHAUSTED",method="Save"})"), 1);
  EXPECT_EQ(Metric(R"(ckpt_requests_total{code="RESOURCE_EXHAUSTED",method="Load"})"), 1);
}

TEST_F(OpsTest, IdleSaveIsCancelledAndLeavesNothing) {
  Start([](server::ServerOptions& o) { o.idle_timeout = absl::Seconds(1); });
  grpc::ClientContext context;
  const auto start = std::chrono::steady_clock::now();
  auto stream = OpenSave(&context, "team/idle");
  v1::SaveResponse response;
  EXPECT_FALSE(stream->Read(&response));  // the server ends the stream
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_THAT(status.error_message(),
              StartsWith("save stream idle: no message from the client for 1"));
  EXPECT_THAT(status.error_message(), HasSubstr(" (--idle-timeout 1s); nothing was saved"));
  EXPECT_GE(waited, 1.0);
  EXPECT_TRUE(WaitForMetric(kSaveStreams, 0));
  EXPECT_EQ(client_->ListVersions("team/idle").status().code(), absl::StatusCode::kNotFound);
  auto info = client_->GetServerInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->stats.active_uploads, 0u);
}

TEST_F(OpsTest, SlowButSteadyStreamIsNotIdle) {
  Start([](server::ServerOptions& o) { o.idle_timeout = absl::Seconds(1); });
  grpc::ClientContext context;
  auto stream = OpenSave(&context, "team/slow");
  v1::SaveRequest request;
  v1::Node* root = request.mutable_nodes()->add_nodes();
  root->mutable_dict()->set_size(0);
  v1::SaveResponse response;
  // 2.4 s in all, never more than 0.4 s between two messages.
  for (int i = 0; i < 6; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    ASSERT_TRUE(stream->Write(request)) << i;
    ASSERT_TRUE(stream->Read(&response)) << i;
    EXPECT_TRUE(response.has_need());
    request.mutable_nodes()->Clear();  // the root went in the first batch
  }
  request.Clear();
  request.mutable_commit();
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_TRUE(response.has_result());
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(OpsTest, IdleLoadIsCancelled) {
  Start([](server::ServerOptions& o) { o.idle_timeout = absl::Seconds(1); });
  auto tree = testing::StateDict(4, 1 << 20, 3);  // 16 MiB
  ASSERT_TRUE(client_->Save("team/big", tree.Input(), {}).ok());

  // A client that stops reading: small flow-control windows, so the server
  // soon has a write it cannot finish.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  auto channel = grpc::CreateCustomChannel(address(), grpc::InsecureChannelCredentials(), args);
  auto stub = v1::CheckpointService::NewStub(channel);
  grpc::ClientContext context;
  v1::LoadRequest request;
  request.set_name("team/big");
  auto reader = stub->Load(&context, request);
  v1::LoadResponse header;
  ASSERT_TRUE(reader->Read(&header));
  ASSERT_TRUE(header.has_header());
  EXPECT_TRUE(WaitForMetric(kLoadStreams, 1));
  // The watchdog cancels it.
  EXPECT_TRUE(WaitForMetric(R"(ckpt_requests_total{code="DEADLINE_EXCEEDED",method="Load"})", 1));
  EXPECT_TRUE(WaitForMetric(kLoadStreams, 0));
  v1::LoadResponse rest;
  while (reader->Read(&rest)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // Others still load it.
  EXPECT_TRUE(client_->Load("team/big", {}).ok());
}

TEST_F(OpsTest, QuotaRefusesSavesBeforeTheirChunksAreSent) {
  Start([](server::ServerOptions& o) {
    o.store.namespace_quota_bytes = 100000;
    o.store.namespace_quotas = {{"big", 0}};
  });
  auto small = testing::StateDict(1, 10000, 1);  // 40000 bytes
  auto large = testing::StateDict(2, 20000, 2);  // 160000 bytes
  ASSERT_TRUE(client_->Save("q/m", small.Input(), {}).ok());
  auto refused = client_->Save("q/m", large.Input(), {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(refused.status().message(),
            "namespace 'q' quota exceeded: it holds 40000 bytes, 'q/m' would add 160000, the "
            "quota is 100000 bytes; nothing was saved");
  // Refused before any chunk crossed the wire; no version, no stored bytes.
  EXPECT_EQ(Metric(kReceived), 40000);
  auto versions = client_->ListVersions("q/m");
  ASSERT_TRUE(versions.ok());
  EXPECT_EQ(versions->size(), 1u);
  EXPECT_EQ(Metric("ckpt_stored_bytes"), 40000);
  // Other namespaces have their own quota; "big" has none.
  EXPECT_TRUE(client_->Save("r/m", small.Input(), {}).ok());
  EXPECT_TRUE(client_->Save("big/m", large.Input(), {}).ok());
  // Deduplicated bytes cost nothing.
  EXPECT_TRUE(client_->Save("q/copy", small.Input(), {}).ok());
}

// ---------------------------------------------------- the binary's log lines

TEST(ServerLogTest, OneStructuredLinePerRpc) {
  testing::TempDir dir;
  auto server = testing::ServerProcess::Start(dir.path() + "/db");
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string cli = testing::CliBinary();
  const std::string file = dir.path() + "/f.bin";
  std::ofstream(file) << "weights";
  ASSERT_EQ(
      testing::RunCommand({cli, "--server", (*server)->address(), "put", "a/f", file}).exit_code,
      0);
  ASSERT_EQ(testing::RunCommand(
                {cli, "--server", (*server)->address(), "get", "a/missing", dir.path() + "/out"})
                .exit_code,
            3);
  const std::string log = (*server)->Log();
  EXPECT_TRUE(std::regex_search(
      log, std::regex("time=20[0-9-]+T[0-9:.]+Z level=info msg=rpc method=Save checkpoint=a/f "
                      "version=1 bytes_in=7 bytes_out=0 duration_ms=[0-9.]+ status=OK "
                      "peer=ipv4:127\\.0\\.0\\.1:[0-9]+ principal=anonymous\n")))
      << log;
  EXPECT_TRUE(std::regex_search(
      log, std::regex("level=info msg=rpc method=Load checkpoint=a/missing version=\"\" "
                      "bytes_in=0 bytes_out=0 duration_ms=[0-9.]+ status=NOT_FOUND "
                      "peer=ipv4:127\\.0\\.0\\.1:[0-9]+ principal=anonymous "
                      "error=\"checkpoint 'a/missing' not found\"\n")))
      << log;
  EXPECT_THAT(log, HasSubstr("metrics on port "));
  EXPECT_GT((*server)->metrics_port(), 0);
  auto scrape = testing::HttpGet((*server)->metrics_port(), "/metrics");
  ASSERT_TRUE(scrape.ok()) << scrape.status();
  EXPECT_EQ(MetricValue(*scrape, kSaveOk), 1);
}

TEST(ServerLogTest, LogLevelAndQuotaFlags) {
  testing::TempDir dir;
  auto server = testing::ServerProcess::Start(
      dir.path() + "/db",
      {"--log-level", "warn", "--namespace-quota", "1KiB", "--quota", "free=0"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string cli = testing::CliBinary();
  const std::string file = dir.path() + "/f.bin";
  std::ofstream(file) << std::string(2000, 'x');
  auto run = [&](const std::string& name) {
    return testing::RunCommand({cli, "--server", (*server)->address(), "put", name, file});
  };
  auto over = run("a/f");
  EXPECT_EQ(over.exit_code, 1);
  EXPECT_EQ(over.err,
            "ckpt: RESOURCE_EXHAUSTED: namespace 'a' quota exceeded: it holds 0 bytes, 'a/f' "
            "would add 2000, the quota is 1024 bytes; nothing was saved\n");
  EXPECT_EQ(run("free/f").exit_code, 0);
  const std::string log = (*server)->Log();
  // warn: the refusal is logged, the successful save is not.
  EXPECT_THAT(log, HasSubstr("level=warn msg=rpc method=Save checkpoint=a/f"));
  EXPECT_THAT(log, Not(HasSubstr("checkpoint=free/f")));
  EXPECT_THAT(log, Not(HasSubstr("level=info")));
  auto bad = testing::ServerProcess::Start(dir.path() + "/db2", {"--quota", "a/b=1"});
  EXPECT_FALSE(bad.ok());
}

// The RocksDB tuning flags reach the database: RocksDB writes the options
// it runs with into the data directory (OPTIONS-NNNNNN). Values it refuses
// stop the server with the reason.
TEST(ServerLogTest, RocksDbTuningFlagsReachTheDatabase) {
  testing::TempDir dir;
  const std::string db = dir.path() + "/db";
  auto server = testing::ServerProcess::Start(
      db, {"--rocksdb-background-jobs", "3", "--rocksdb-block-cache", "8MiB",
           "--rocksdb-write-buffer", "2MiB", "--rocksdb-manifest-write-buffer", "24MiB"});
  ASSERT_TRUE(server.ok()) << server.status();
  std::string options_file;
  for (const auto& entry : std::filesystem::directory_iterator(db)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("OPTIONS-", 0) == 0 && name > options_file) options_file = name;
  }
  ASSERT_FALSE(options_file.empty()) << "no OPTIONS file in " << db;
  std::ifstream in(db + "/" + options_file);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_THAT(text, HasSubstr("max_background_jobs=3\n"));
  // Four column families with 2 MiB memtables (chunks, refs, tags,
  // default) and the manifests one with 24 MiB.
  size_t small = 0;
  for (size_t at = text.find("write_buffer_size=2097152\n"); at != std::string::npos;
       at = text.find("write_buffer_size=2097152\n", at + 1)) {
    ++small;
  }
  EXPECT_EQ(small, 4u) << text;
  EXPECT_THAT(text, HasSubstr("write_buffer_size=25165824\n"));
  (*server)->Terminate();

  auto bad = testing::ServerProcess::Start(dir.path() + "/db2", {"--rocksdb-write-buffer", "0"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("write_buffer_bytes"));
  EXPECT_FALSE(
      testing::ServerProcess::Start(dir.path() + "/db3", {"--rocksdb-background-jobs", "0"}).ok());
}

// A second server on a store in use is refused in words (RocksDB's LOCK).
TEST(ServerLogTest, ASecondServerOnOneStoreIsRefusedInWords) {
  testing::TempDir dir;
  auto first = testing::ServerProcess::Start(dir.path() + "/db");
  ASSERT_TRUE(first.ok()) << first.status();
  auto second =
      testing::RunCommand({"timeout", "30", testing::ServerBinary(), "--data-dir",
                           dir.path() + "/db", "--listen", "127.0.0.1:0", "--metrics-listen", ""});
  EXPECT_EQ(second.exit_code, 1) << second.err;
  EXPECT_THAT(second.err, HasSubstr("ckpt-server: FAILED_PRECONDITION: the store at " + dir.path() +
                                    "/db is in use by another process (another ckpt-server?), "
                                    "which holds its LOCK file: stop that one or choose another "
                                    "--data-dir"));
  // The first one serves on.
  auto stats =
      testing::RunCommand({testing::CliBinary(), "--server", (*first)->address(), "stats"});
  EXPECT_EQ(stats.exit_code, 0) << stats.err;
}

// CKPT_METRICS_LISTEN="" turns the endpoint off, like --metrics-listen "".
TEST(ServerLogTest, AnEmptyMetricsVariableMeansNoEndpoint) {
  testing::TempDir dir;
  auto run = testing::RunCommand({"timeout", "8", testing::ServerBinary(), "--data-dir",
                                  dir.path() + "/db", "--listen", "127.0.0.1:0"},
                                 {"CKPT_METRICS_LISTEN="});
  EXPECT_THAT(run.err, HasSubstr(" listening on port "));
  EXPECT_THAT(run.err, Not(HasSubstr("metrics on port")));
  EXPECT_THAT(run.err, HasSubstr("ckpt-server: stopped"));
}

// A second server on a taken port must not start (gRPC's SO_REUSEPORT would
// let it, and clients would be split between two stores); a taken metrics
// port is said in words. `timeout` ends a server that wrongly starts.
TEST(ServerLogTest, TakenPortsAreRefusedInWords) {
  testing::TempDir dir;
  auto first = testing::ServerProcess::Start(dir.path() + "/db");
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string grpc_port = std::to_string((*first)->port());
  const std::string metrics_port = std::to_string((*first)->metrics_port());
  const std::string log = (*first)->Log();
  EXPECT_THAT(log, HasSubstr("access control OFF (development mode)"));
  EXPECT_THAT(log, HasSubstr("try: ckpt --server localhost:" + grpc_port + " stats"));

  auto second = testing::RunCommand({"timeout", "30", testing::ServerBinary(), "--data-dir",
                                     dir.path() + "/db2", "--listen", "127.0.0.1:" + grpc_port,
                                     "--metrics-listen", "127.0.0.1:0"});
  EXPECT_EQ(second.exit_code, 1) << second.err;
  EXPECT_THAT(second.err,
              HasSubstr("ckpt-server: UNAVAILABLE: cannot listen on 127.0.0.1:" + grpc_port +
                        " (gRPC): Address already in use (another ckpt-server or program "
                        "listens there: stop it or choose another port with --listen)"));

  auto metrics = testing::RunCommand({"timeout", "30", testing::ServerBinary(), "--data-dir",
                                      dir.path() + "/db3", "--listen", "127.0.0.1:0",
                                      "--metrics-listen", "127.0.0.1:" + metrics_port});
  EXPECT_EQ(metrics.exit_code, 1) << metrics.err;
  EXPECT_THAT(metrics.err, HasSubstr("cannot listen on 127.0.0.1:" + metrics_port +
                                     " (metrics): Address already in use"));
  EXPECT_THAT(metrics.err, HasSubstr("--metrics-listen"));
  EXPECT_THAT(metrics.err, Not(HasSubstr("CivetServer")));

  // Every client still reaches the first server's store.
  for (int i = 0; i < 5; ++i) {
    auto stats =
        testing::RunCommand({testing::CliBinary(), "--server", (*first)->address(), "stats"});
    EXPECT_EQ(stats.exit_code, 0) << stats.err;
  }
  auto version = testing::RunCommand({testing::ServerBinary(), "--version"});
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_EQ(version.out, "ckpt-server " CKPT_VERSION "\n");
}

}  // namespace
}  // namespace ckpt
