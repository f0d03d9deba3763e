// Hostile clients against the real ckpt-server process: work and memory a
// client can make the server spend must stay bounded, whatever it sends.
//   - glob patterns that backtrack against long keys must neither stall the
//     workers nor outlive their calls;
//   - abandoned multi-part parts and trees in flight are held within a
//     server-wide memory budget, and a cancelled part is dropped at once;
//   - long keys are refused past 64 KiB, and flattened keys cost linear
//     memory;
//   - user strings are cut in statuses and log lines.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "client/raw_client.h"
#include "tests/testing/http.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

using testing::ProcStatusMiB;

class HostileTest : public ::testing::Test {
 protected:
  void Start(const std::vector<std::string>& flags, const std::vector<std::string>& env = {}) {
    auto server = testing::ServerProcess::Start(dir_.path() + "/db", flags, "", env);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::CheckpointService::NewStub(channel_);
    auto client = client::RawClient::Connect(server_->address(), {});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  // A save of `nodes` (no tensor data) through the raw stub; with
  // `cancel_after_commit`, the stream is cancelled once the commit is sent
  // (a multi-part part then waits on the server).
  // `nodes_taken` (if given) turns true once the server answered the last
  // node batch: it holds the tree from then on.
  grpc::Status SaveNodes(const std::string& name, const std::vector<v1::Node>& nodes,
                         const v1::PartInfo* part = nullptr, bool cancel_after_commit = false,
                         std::atomic<bool>* nodes_taken = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto stream = stub_->Save(&context);
    v1::SaveRequest request;
    v1::SaveResponse response;
    request.mutable_begin()->set_name(name);
    if (part != nullptr) *request.mutable_begin()->mutable_part() = *part;
    if (!stream->Write(request) || !stream->Read(&response)) return stream->Finish();
    // Node batches of at most ~3 MB (one node may fill a batch alone).
    for (size_t i = 0; i < nodes.size();) {
      request.Clear();
      size_t bytes = 0;
      while (i < nodes.size() && (bytes == 0 || bytes + nodes[i].ByteSizeLong() < (3 << 20))) {
        bytes += nodes[i].ByteSizeLong();
        *request.mutable_nodes()->add_nodes() = nodes[i++];
      }
      if (!stream->Write(request) || !stream->Read(&response)) return stream->Finish();
    }
    if (nodes_taken != nullptr) nodes_taken->store(true);
    request.Clear();
    request.mutable_commit();
    if (!stream->Write(request)) return stream->Finish();
    if (cancel_after_commit) {
      // The part is registered once the server holds it as a live upload.
      WaitForActiveUploads(1);
      context.TryCancel();
      return stream->Finish();
    }
    stream->WritesDone();
    while (stream->Read(&response)) {
    }
    return stream->Finish();
  }

  // Polls GetServerInfo (for at most 10 s) until `n` uploads are live;
  // returns whether that happened.
  bool WaitForActiveUploads(uint64_t n) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      auto info = client_->GetServerInfo();
      if (info.ok() && info->stats.active_uploads == n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  double Metric(const std::string& series) {
    return testing::ScrapeMetric(server_->metrics_port(), series);
  }
  bool WaitForMetric(const std::string& series, double value) {
    return testing::WaitForMetric(server_->metrics_port(), series, value, 10);
  }

  static v1::Node Dict(uint32_t size, const std::string& key = "") {
    v1::Node n;
    n.mutable_dict()->set_size(size);
    if (!key.empty()) n.set_str_key(key);
    return n;
  }
  static v1::Node Int(const std::string& key, int64_t v) {
    v1::Node n;
    n.set_str_key(key);
    n.set_int_value(v);
    return n;
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CheckpointService::Stub> stub_;
  std::unique_ptr<client::RawClient> client_;
};

// Point 4: 4 concurrent Loads of backtracking patterns against 60,000-byte
// keys. The server answers other calls meanwhile, and every Load ends within
// seconds (refused as too costly, or matched in linear time).
TEST_F(HostileTest, BacktrackingPatternsNeitherStallWorkersNorOutliveTheirCalls) {
  Start({"--worker-threads", "4"});
  std::vector<v1::Node> nodes = {Dict(16)};
  for (int i = 0; i < 16; ++i) nodes.push_back(Int(std::string(59990, 'a') + absl::StrCat(i), i));
  ASSERT_TRUE(SaveNodes("evil/keys", nodes).ok());

  auto load_with = [&](int patterns, int64_t timeout_ms) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    v1::LoadRequest request;
    request.set_name("evil/keys");
    // The pattern, and with a star at the end, so that the long
    // segment is searched for rather than anchored at the key's end.
    const std::string star_end = patterns == 256 ? "" : "*";
    const int as = patterns == 256 ? 1022 : 1021;
    for (int p = 0; p < patterns; ++p) {
      request.add_patterns("*" + std::string(as, 'a') + "b" + star_end);
    }
    auto reader = stub_->Load(&context, request);
    v1::LoadResponse response;
    while (reader->Read(&response)) {
    }
    return reader->Finish();
  };

  // The exact request: 256 patterns of 1,024 bytes are past the
  // per-request pattern bytes.
  grpc::Status too_many = load_with(256, 10000);
  EXPECT_EQ(too_many.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(too_many.error_message().find("patterns of"), std::string::npos)
      << too_many.error_message();

  std::atomic<bool> done{false};
  std::atomic<int> info_failures{0}, info_calls{0};
  std::thread prober([&] {
    while (!done.load()) {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::GetServerInfoRequest request;
      v1::GetServerInfoResponse response;
      if (!stub_->GetServerInfo(&context, request, &response).ok()) ++info_failures;
      ++info_calls;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> loads;
  std::vector<grpc::Status> results(8);
  for (int t = 0; t < 8; ++t) {
    // Half within budget (matched), half past it (refused); half the
    // clients give up after 100 ms.
    loads.emplace_back([&, t] { results[t] = load_with(t % 2 ? 63 : 3, t < 4 ? 100 : 20000); });
  }
  for (auto& t : loads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  done.store(true);
  prober.join();
  EXPECT_LT(seconds, 15.0);
  EXPECT_EQ(info_failures.load(), 0)
      << "GetServerInfo timed out while " << info_calls.load() << " probes ran";
  for (int t = 4; t < 8; ++t) {
    if (t % 2) {
      EXPECT_EQ(results[t].error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
          << results[t].error_message();
    } else {
      // No key ends in 'b': nothing matches.
      EXPECT_EQ(results[t].error_code(), grpc::StatusCode::NOT_FOUND) << results[t].error_message();
    }
  }
}

// Point 5: parts whose clients went away are dropped, and the trees in
// flight are bounded server-wide, not per stream.
TEST_F(HostileTest, AbandonedPartsAreDroppedAndTreeMemoryIsBoundedServerWide) {
  Start({"--max-tree-memory", absl::StrCat(72 << 20)});
  const double rss_before = ProcStatusMiB(server_->pid(), "VmRSS:");
  // A list of 250,000 None: ~1 MB on the wire, tens of MB in memory.
  std::vector<v1::Node> nodes = {Dict(1)};
  v1::Node list;
  list.set_str_key("junk");
  list.mutable_list()->set_size(250000);
  nodes.push_back(list);
  v1::Node none;
  none.mutable_none();
  for (int i = 0; i < 250000; ++i) nodes.push_back(none);

  int refused = 0;
  for (int i = 0; i < 10; ++i) {
    v1::PartInfo part;
    part.set_world_size(2);
    part.set_rank(0);
    part.set_save_id(absl::StrCat("abandoned-", i));
    grpc::Status s = SaveNodes("evil/parts", nodes, &part, /*cancel_after_commit=*/true);
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++refused;
      EXPECT_NE(s.error_message().find("--max-tree-memory"), std::string::npos)
          << s.error_message();
    } else {
      EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << s.error_message();
    }
    // The part is dropped with its stream: its upload goes at once.
    ASSERT_TRUE(WaitForActiveUploads(0)) << "the cancelled part " << i << " is still held";
  }
  EXPECT_EQ(refused, 0);
  const double held = ProcStatusMiB(server_->pid(), "VmRSS:") - rss_before;
  EXPECT_LT(held, 300.0) << "cancelled parts still hold memory";

  // Two parts waiting at once (not cancelled) are past the budget: the
  // second is refused, while the first keeps waiting.
  v1::PartInfo first;
  first.set_world_size(3);
  first.set_rank(0);
  first.set_save_id("waiting");
  grpc::Status first_status;
  std::atomic<bool> taken{false};
  std::thread waiter([&] { first_status = SaveNodes("evil/parts", nodes, &first, false, &taken); });
  for (int i = 0; i < 500 && !taken.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(taken.load());
  v1::PartInfo second = first;
  second.set_rank(1);
  grpc::Status s = SaveNodes("evil/parts", nodes, &second);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  server_->Kill();
  waiter.join();
  // Nothing was ever committed.
  EXPECT_NE(first_status.error_code(), grpc::StatusCode::OK);
}

// A rank whose stream fails before its part is in (killed, cancelled,
// refused) abandons its multi-part save: ranks already waiting get ABORTED
// at once, ranks whose streams began before the failure get it when they
// commit, instead of waiting --part-timeout; a save begun afterwards with
// the same save_id is a new save and commits.
TEST_F(HostileTest, ARankThatFailsBeforeItsPartIsInAbortsTheOtherRanksAtOnce) {
  Start({"--part-timeout", "30"});
  auto part_of = [](uint32_t rank, const std::string& save_id) {
    v1::PartInfo part;
    part.set_world_size(2);
    part.set_rank(rank);
    part.set_save_id(save_id);
    return part;
  };
  // Rank `rank`'s stream: its SaveBegin and one node batch, answered.
  struct Open {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::SaveRequest, v1::SaveResponse>> stream;
  };
  auto open = [&](Open& o, uint32_t rank, const std::string& save_id) {
    o.stream = stub_->Save(&o.context);
    v1::SaveRequest request;
    v1::SaveResponse response;
    request.mutable_begin()->set_name("mp/a");
    *request.mutable_begin()->mutable_part() = part_of(rank, save_id);
    ASSERT_TRUE(o.stream->Write(request) && o.stream->Read(&response));
    request.Clear();
    *request.mutable_nodes()->add_nodes() = Dict(1);
    *request.mutable_nodes()->add_nodes() = Int(absl::StrCat("rank", rank), rank);
    ASSERT_TRUE(o.stream->Write(request) && o.stream->Read(&response));
  };
  auto commit = [](Open& o) {
    v1::SaveRequest request;
    request.mutable_commit();
    o.stream->Write(request);
    o.stream->WritesDone();
    v1::SaveResponse response;
    while (o.stream->Read(&response)) {
    }
    return o.stream->Finish();
  };
  auto cancel = [](Open& o) {
    o.context.TryCancel();
    return o.stream->Finish();
  };
  // (Its own end reads CANCELLED or ABORTED "save stream ended before
  // SaveCommit": whichever the server sees first.)
  const std::string why = "rank 1 of a 2-part save of 'mp/a' ended before its part was in (";
  const std::string end = "); the save is abandoned and nothing was saved";

  // Rank 0 waits with its part in; rank 1 is killed while sending its own.
  {
    Open rank0, rank1;
    open(rank0, 0, "s1");
    open(rank1, 1, "s1");
    grpc::Status waited;
    std::thread waiter([&] { waited = commit(rank0); });
    ASSERT_TRUE(WaitForMetric("ckpt_parts_waiting", 1));
    const auto cancelled_at = std::chrono::steady_clock::now();
    EXPECT_EQ(cancel(rank1).error_code(), grpc::StatusCode::CANCELLED);
    waiter.join();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - cancelled_at).count();
    EXPECT_EQ(waited.error_code(), grpc::StatusCode::ABORTED) << waited.error_message();
    EXPECT_NE(waited.error_message().find(why), std::string::npos) << waited.error_message();
    EXPECT_NE(waited.error_message().find(end), std::string::npos) << waited.error_message();
    EXPECT_LT(seconds, 10.0) << "rank 0 waited for --part-timeout";
  }
  // Rank 1 fails first, while rank 0 is still sending: rank 0's part is
  // refused when it arrives.
  {
    Open rank0, rank1;
    open(rank0, 0, "s2");
    open(rank1, 1, "s2");
    EXPECT_EQ(cancel(rank1).error_code(), grpc::StatusCode::CANCELLED);
    const grpc::Status late = commit(rank0);
    EXPECT_EQ(late.error_code(), grpc::StatusCode::ABORTED) << late.error_message();
    EXPECT_NE(late.error_message().find(why), std::string::npos) << late.error_message();
  }
  EXPECT_EQ(client_->ListVersions("mp/a").status().code(), absl::StatusCode::kNotFound);
  // The job tries again with the same save_id: a new save, which commits.
  {
    Open rank0, rank1;
    open(rank0, 0, "s2");
    open(rank1, 1, "s2");
    grpc::Status first;
    std::thread waiter([&] { first = commit(rank0); });
    const grpc::Status second = commit(rank1);
    waiter.join();
    EXPECT_TRUE(first.ok()) << first.error_message();
    EXPECT_TRUE(second.ok()) << second.error_message();
  }
  auto versions = client_->ListVersions("mp/a");
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->size(), 1u);
  EXPECT_EQ((*versions)[0].world_size, 2u);
  EXPECT_TRUE(WaitForMetric("ckpt_parts_waiting", 0));
  EXPECT_EQ(Metric("ckpt_abandoned_saves_total"), 2);
  WaitForActiveUploads(0);
}

// A save whose tree alone is past --max-tree-memory is told that waiting
// will not help; smaller saves go through.
TEST_F(HostileTest, ATreeLargerThanTheWholeTreeBudgetIsNotToldToRetry) {
  Start({"--max-tree-memory", "100000"});
  std::vector<v1::Node> nodes = {Dict(2000)};
  for (int i = 0; i < 2000; ++i) nodes.push_back(Int(absl::StrCat("k", i), i));
  const grpc::Status big = SaveNodes("t/big", nodes);
  EXPECT_EQ(big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << big.error_message();
  EXPECT_EQ(big.error_message().rfind("this save's tree needs ", 0), 0u) << big.error_message();
  EXPECT_NE(big.error_message().find(" bytes of server memory, more than all saves in flight "
                                     "may hold (--max-tree-memory 100000); nothing was saved "
                                     "(save fewer nodes, or raise --max-tree-memory)"),
            std::string::npos)
      << big.error_message();
  EXPECT_EQ(big.error_message().find("retry later"), std::string::npos);
  nodes = {Dict(10)};
  for (int i = 0; i < 10; ++i) nodes.push_back(Int(absl::StrCat("k", i), i));
  const grpc::Status small = SaveNodes("t/small", nodes);
  EXPECT_TRUE(small.ok()) << small.error_message();
}

// What a burst of concurrent saves made the server's heap take goes back to
// the system once no stream is open (glibc keeps freed memory in its
// arenas: a server kept 1 GB after 64 saves at once). The server keeps up
// to 32 MiB free at the top of each arena for the next buffers (its
// M_TRIM_THRESHOLD); with glibc's own threshold, as here, only live memory
// stays (5-45 MiB under load: caches, compactions of the burst's files; the
// previous server kept 50-140 MiB after 16 saves).
TEST_F(HostileTest, TheMemoryOfABurstOfSavesGoesBackOnceTheServerIsIdle) {
  Start({}, {"MALLOC_TRIM_THRESHOLD_=131072"});
  const double before = ProcStatusMiB(server_->pid(), "RssAnon:");
  constexpr int kSaves = 24;
  std::vector<testing::TreeBuilder> trees;
  for (int i = 0; i < kSaves; ++i) trees.push_back(testing::StateDict(8, 1 << 20, 100 + i));
  double peak = before;
  std::atomic<bool> saving{true};
  std::thread sampler([&] {
    while (saving.load()) {
      peak = std::max(peak, ProcStatusMiB(server_->pid(), "RssAnon:"));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  std::vector<std::thread> savers;
  std::vector<absl::Status> results(kSaves);
  for (int i = 0; i < kSaves; ++i) {
    savers.emplace_back([&, i] {
      auto client = client::RawClient::Connect(server_->address(), {});
      results[i] = client.ok()
                       ? (*client)->Save(absl::StrCat("burst/s", i), trees[i].Input(), {}).status()
                       : client.status();
    });
  }
  for (auto& t : savers) t.join();
  saving.store(false);
  sampler.join();
  for (const absl::Status& r : results) ASSERT_TRUE(r.ok()) << r;
  ASSERT_GT(peak - before, 100.0) << "the burst took too little memory to tell";
  double after = peak;
  for (int i = 0; i < 300 && after - before > 64.0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    after = ProcStatusMiB(server_->pid(), "RssAnon:");
  }
  EXPECT_LT(after - before, 64.0) << "heap before " << before << " MiB, peak " << peak
                                  << " MiB, 30 s after the saves " << after << " MiB";
}

// Point 6: keys past 64 KiB are refused; a long key shared by many
// children costs memory once per child only within the flattened-key total.
TEST_F(HostileTest, LongKeysAreRefusedAndFlattenedKeysStayLinear) {
  Start({});
  const double hwm_before = ProcStatusMiB(server_->pid(), "VmHWM:");
  // 16 nested dicts with 3.9 MB keys: refused at once.
  std::vector<v1::Node> deep;
  for (int i = 0; i < 16; ++i) deep.push_back(Dict(1, i == 0 ? "" : std::string(3900000, 'k')));
  deep.push_back(Int(std::string(3900000, 'k'), 1));
  grpc::Status s = SaveNodes("evil/deep", deep);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("bytes (max 65536)"), std::string::npos) << s.error_message();
  EXPECT_LT(s.error_message().size(), 2000u);

  // 16 nested dicts with 4,000-byte keys (flattened: 60 KB), 1,000 leaves at
  // the bottom: accepted and loadable by pattern.
  std::vector<v1::Node> wide;
  wide.push_back(Dict(1));
  for (int i = 1; i < 15; ++i) wide.push_back(Dict(1, std::string(4000, 'a' + i)));
  wide.push_back(Dict(1000, std::string(4000, 'z')));
  for (int i = 0; i < 1000; ++i) wide.push_back(Int(absl::StrCat("leaf", i), i));
  ASSERT_TRUE(SaveNodes("evil/wide", wide).ok());
  client::LoadOptions options;
  options.patterns = {"*/leaf999"};
  auto loaded = client_->Load("evil/wide", options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->tree.back().int_value, 999);

  // 2,000 leaves under that prefix: 120 MB of flattened keys, refused.
  wide[15] = Dict(2000, std::string(4000, 'z'));
  for (int i = 1000; i < 2000; ++i) wide.push_back(Int(absl::StrCat("leaf", i), i));
  s = SaveNodes("evil/wide", wide);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("flattened keys exceed"), std::string::npos)
      << s.error_message();
  EXPECT_LT(ProcStatusMiB(server_->pid(), "VmHWM:") - hwm_before, 400.0);
}

// Point 8: user strings are cut in statuses and in log lines.
TEST_F(HostileTest, UserStringsAreCutInStatusesAndLogs) {
  Start({});
  const std::string key(60000, 'd');
  std::vector<v1::Node> nodes = {Dict(2), Int(key, 1), Int(key, 2)};
  grpc::Status s = SaveNodes("evil/dup", nodes);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("duplicate dict key"), std::string::npos);
  EXPECT_NE(s.error_message().find("(60000 bytes)"), std::string::npos) << s.error_message();
  EXPECT_LT(s.error_message().size(), 1000u);

  const std::string huge(1000000, 'h');
  nodes = {Dict(2), Int(huge, 1), Int(huge, 2)};
  s = SaveNodes("evil/dup", nodes);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_LT(s.error_message().size(), 1000u);

  v1::GetManifestRequest request;
  request.set_name("evil/none");
  request.set_page_token(std::string(500000, '9') + "x");
  grpc::ClientContext context;
  v1::GetManifestResponse response;
  s = stub_->GetManifest(&context, request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_LT(s.error_message().size(), 1000u);

  server_->Terminate();
  size_t longest = 0;
  for (absl::string_view line : absl::StrSplit(server_->Log(), '\n')) {
    longest = std::max(longest, line.size());
  }
  EXPECT_LT(longest, 8192u) << "a log line repeats a user string at full length";
}

}  // namespace
}  // namespace ckpt
