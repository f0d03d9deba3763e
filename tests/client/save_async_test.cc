// Client::SaveAsync and the Client's lifetime (issue 8, point 11): the
// upload runs on a thread the Client owns, so destroying the client, closing
// it or leaving main before the future is ready neither uses freed memory
// nor loses the version. Built a second time with AddressSanitizer
// (save_async_asan_test, CKPT_ASAN_TESTS=ON) to catch a use-after-free.
//
// The binary has its own main: with CKPT_SAVE_ASYNC_CHILD=HOST:PORT in the
// environment it is the child of ExitRightAfterSaveAsyncKeepsTheVersion (it
// starts an async save and returns from main at once).

#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <set>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/torch_tree.h"
#include "server/server.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/temp_dir.h"

extern char** environ;

namespace ckpt::client {
namespace {

// 64 MiB in 64 tensors: long enough to upload (tens to hundreds of ms) that
// the save is still running when the client goes away.
c10::Dict<std::string, at::Tensor> BigStateDict(int64_t seed) {
  torch::manual_seed(seed);
  c10::Dict<std::string, at::Tensor> sd;
  for (int i = 0; i < 64; ++i) sd.insert(absl::StrCat("layer", i), torch::randn({1 << 18}));
  return sd;
}

c10::Dict<std::string, at::Tensor> CloneStateDict(const c10::Dict<std::string, at::Tensor>& d) {
  c10::Dict<std::string, at::Tensor> out;
  for (const auto& e : d) out.insert(e.key(), e.value().clone());
  return out;
}

// Adds 1 to every element (floating-point state dicts).
void AddOne(c10::Dict<std::string, at::Tensor>& d) {
  for (auto& e : d) e.value().add_(1);
}

void ExpectEqualStateDict(const c10::IValue& loaded,
                          const c10::Dict<std::string, at::Tensor>& expected) {
  ASSERT_TRUE(loaded.isGenericDict());
  auto dict = loaded.toGenericDict();
  ASSERT_EQ(dict.size(), expected.size());
  for (const auto& e : expected) {
    EXPECT_TRUE(dict.at(e.key()).toTensor().equal(e.value())) << e.key();
  }
}

class SaveAsyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server::ServerOptions options = testing::TestServerOptions(dir_.path());
    options.chunk_size = 1 << 20;
    auto server = server::Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    target_ = testing::AddressOf(*server_);
  }

  std::unique_ptr<Client> Connect() {
    auto client = Client::Connect(target_, {});
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  testing::TempDir dir_;
  std::unique_ptr<server::Server> server_;
  std::string target_;
};

TEST_F(SaveAsyncTest, DestroyingTheClientWaitsForTheAsyncSave) {
  const auto sd = BigStateDict(1);
  std::unique_ptr<Client> client = Connect();
  ASSERT_NE(client, nullptr);
  std::future<absl::StatusOr<SaveResult>> future = client->SaveAsync("async/destroyed", sd, {});
  client.reset();  // right away: the upload has barely started
  // The destructor waited: the result is there already.
  ASSERT_EQ(future.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  absl::StatusOr<SaveResult> result = future.get();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->version.version, 1u);

  std::unique_ptr<Client> reader = Connect();
  ASSERT_NE(reader, nullptr);
  auto loaded = reader->Load("async/destroyed", {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectEqualStateDict(*loaded, sd);
}

TEST_F(SaveAsyncTest, CloseWaitsThenRefusesAsyncSavesOnly) {
  const auto sd = BigStateDict(2);
  std::unique_ptr<Client> client = Connect();
  ASSERT_NE(client, nullptr);
  auto first = client->SaveAsync("async/closed", sd, {});
  auto second = client->SaveAsync("async/closed", sd, {});
  client->Close();
  ASSERT_EQ(first.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  ASSERT_EQ(second.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  EXPECT_TRUE(first.get().ok());
  EXPECT_TRUE(second.get().ok());

  auto refused = client->SaveAsync("async/closed", sd, {}).get();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(refused.status().message().find("closed"), std::string::npos) << refused.status();
  client->Close();  // idempotent

  // Synchronous calls still work until the client is destroyed.
  auto saved = client->Save("async/closed", sd, {});
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(saved->version.version, 3u);
  auto loaded = client->Load("async/closed", {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ExpectEqualStateDict(*loaded, sd);
}

TEST_F(SaveAsyncTest, ManyAsyncSavesFromTheSameClientAllLand) {
  std::unique_ptr<Client> client = Connect();
  ASSERT_NE(client, nullptr);
  std::vector<std::future<absl::StatusOr<SaveResult>>> futures;
  for (int i = 0; i < 8; ++i) {
    c10::Dict<std::string, at::Tensor> sd;
    sd.insert("step", torch::full({1000}, static_cast<double>(i)));
    futures.push_back(client->SaveAsync(absl::StrCat("async/many", i), sd, {}));
  }
  for (auto& f : futures) {
    auto result = f.get();
    EXPECT_TRUE(result.ok()) << result.status();
  }
  for (int i = 0; i < 8; ++i) {
    auto loaded = client->Load(absl::StrCat("async/many", i), {});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_TRUE(loaded->toGenericDict().at("step").toTensor().equal(
        torch::full({1000}, static_cast<double>(i))));
  }
}

// The child starts an async save and leaves main at once (its Client, a
// local of main, is destroyed on the way out): the version must be there.
TEST_F(SaveAsyncTest, ExitRightAfterSaveAsyncKeepsTheVersion) {
  std::string env = absl::StrCat("CKPT_SAVE_ASYNC_CHILD=", target_);
  std::vector<char*> envp;
  envp.push_back(env.data());
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  envp.push_back(nullptr);
  char self[] = "/proc/self/exe";
  char* argv[] = {self, nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, envp.data()), 0);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus)) << "child died: status " << wstatus;
  ASSERT_EQ(WEXITSTATUS(wstatus), 0);

  std::unique_ptr<Client> reader = Connect();
  ASSERT_NE(reader, nullptr);
  auto loaded = reader->Load("async/exit", {});
  ASSERT_TRUE(loaded.ok()) << "the async save of a process that left main was lost: "
                           << loaded.status();
  ExpectEqualStateDict(*loaded, BigStateDict(3));
}

int ChildMain(const std::string& target) {
  auto client = Client::Connect(target, {});
  if (!client.ok()) return 2;
  auto future = (*client)->SaveAsync("async/exit", BigStateDict(3), {});
  (void)future;  // not waited for: main returns now
  return 0;
}

TEST_F(SaveAsyncTest, SnapshotBuffersAreReusedAndNeverSharedByTwoSavesInFlight) {
  std::unique_ptr<Client> client = Connect();
  ASSERT_NE(client, nullptr);
  // Besides plain tensors: a strided view, bool, bfloat16, a conjugate
  // view, 0-d and empty ones (copied through a view of the buffer).
  auto sd = BigStateDict(3);
  sd.insert("strided", torch::arange(24, torch::kFloat32).reshape({4, 6}).t());
  sd.insert("flags", torch::tensor({true, false, true}));
  sd.insert("half", torch::randn({5}).to(torch::kBFloat16));
  sd.insert("conj", torch::complex(torch::randn({3}), torch::randn({3})).conj());
  sd.insert("scalar", torch::tensor(7.5));
  sd.insert("empty", torch::empty({0, 3}));
  // A change of every element, whatever the dtype.
  auto change = [](c10::Dict<std::string, at::Tensor>& d) {
    for (auto& e : d) {
      at::Tensor t = e.value();
      if (t.scalar_type() == at::kBool) {
        t.logical_not_();
      } else {
        t.add_(1);
      }
    }
  };
  const auto v1 = CloneStateDict(sd);
  ASSERT_EQ(client->snapshot_buffer_bytes(), 0u);
  ASSERT_TRUE(client->SaveAsync("async/reuse", sd, {}).get().ok());
  const uint64_t kept = client->snapshot_buffer_bytes();
  EXPECT_GE(kept, 64u << 20);  // the buffer stays for the next save
  EXPECT_LT(kept, (64u << 20) + 4096);

  // A save after it finished reuses it: still one buffer, not two.
  ASSERT_TRUE(client->SaveAsync("async/reuse-again", sd, {}).get().ok());
  EXPECT_EQ(client->snapshot_buffer_bytes(), kept);
  // The next save snapshots into it; changing the tensors right after the
  // call does not reach the version.
  change(sd);
  const auto v2 = CloneStateDict(sd);
  auto second = client->SaveAsync("async/reuse", sd, {});
  change(sd);
  const auto v3 = CloneStateDict(sd);
  // A third while the second may still upload: another buffer.
  auto third = client->SaveAsync("async/reuse", sd, {});
  change(sd);
  auto second_saved = second.get();
  auto third_saved = third.get();
  ASSERT_TRUE(second_saved.ok()) << second_saved.status();
  ASSERT_TRUE(third_saved.ok()) << third_saved.status();
  EXPECT_LE(client->snapshot_buffer_bytes(), 2 * kept);
  // Versions are numbered in commit order: the third save may commit first.
  EXPECT_EQ(std::set<uint64_t>({second_saved->version.version, third_saved->version.version}),
            std::set<uint64_t>({2, 3}));
  for (auto [version, expected] :
       {std::pair{uint64_t{1}, &v1}, std::pair{second_saved->version.version, &v2},
        std::pair{third_saved->version.version, &v3}}) {
    TorchLoadOptions options;
    options.version = version;
    auto loaded = client->Load("async/reuse", options);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto dict = loaded->toGenericDict();
    ASSERT_EQ(dict.size(), expected->size());
    for (const auto& e : *expected) {
      const at::Tensor got = dict.at(e.key()).toTensor();
      EXPECT_EQ(got.scalar_type(), e.value().scalar_type()) << e.key();
      EXPECT_TRUE(got.equal(e.value().resolve_conj())) << "v" << version << " " << e.key();
    }
  }
  client->ReleaseSnapshotBuffers();
  EXPECT_EQ(client->snapshot_buffer_bytes(), 0u);
  ASSERT_TRUE(client->SaveAsync("async/reuse", sd, {}).get().ok());
  EXPECT_GT(client->snapshot_buffer_bytes(), 0u);
  client->Close();
  EXPECT_EQ(client->snapshot_buffer_bytes(), 0u);
}

// A snapshot starts copying into the idle buffer of the previous one while
// it walks the state_dict (it cannot know the size before): a state_dict
// that outgrew that buffer is copied again, whole, into one that fits, and
// one that shrank uses part of it; every version holds the values of its
// call, changed right after it returns.
TEST_F(SaveAsyncTest, ASnapshotOutgrowingTheIdleBufferIsCopiedWholeIntoOneThatFits) {
  std::unique_ptr<Client> client = Connect();
  ASSERT_NE(client, nullptr);
  auto sd = BigStateDict(5);
  ASSERT_TRUE(client->SaveAsync("async/grow", sd, {}).get().ok());
  const uint64_t kept = client->snapshot_buffer_bytes();
  ASSERT_GE(kept, 64u << 20);

  // 16 MiB more at the end of the walk: the first 64 MiB fit the idle
  // buffer, the rest does not.
  for (int i = 0; i < 16; ++i) sd.insert(absl::StrCat("extra", i), torch::randn({1 << 18}));
  const auto grown = CloneStateDict(sd);
  auto saved = client->SaveAsync("async/grow", sd, {});
  AddOne(sd);
  auto grown_saved = saved.get();
  ASSERT_TRUE(grown_saved.ok()) << grown_saved.status();
  // Both buffers stay idle: the one that was too small and the new one.
  EXPECT_GE(client->snapshot_buffer_bytes(), kept + (80u << 20));
  EXPECT_LT(client->snapshot_buffer_bytes(), kept + (80u << 20) + 8192);

  // Smaller again: it fits the largest idle buffer.
  c10::Dict<std::string, at::Tensor> small;
  for (int i = 0; i < 8; ++i)
    small.insert(absl::StrCat("layer", i), sd.at(absl::StrCat("layer", i)));
  const auto shrunk = CloneStateDict(small);
  const uint64_t idle = client->snapshot_buffer_bytes();
  saved = client->SaveAsync("async/grow", small, {});
  AddOne(small);
  auto shrunk_saved = saved.get();
  ASSERT_TRUE(shrunk_saved.ok()) << shrunk_saved.status();
  EXPECT_EQ(client->snapshot_buffer_bytes(), idle);  // no new buffer

  for (auto [version, expected] : {std::pair{grown_saved->version.version, &grown},
                                   std::pair{shrunk_saved->version.version, &shrunk}}) {
    TorchLoadOptions options;
    options.version = version;
    auto loaded = client->Load("async/grow", options);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ExpectEqualStateDict(*loaded, *expected);
  }
}

// The snapshot's copies during the walk, at the level of Flatten: what is
// copied while walking (counted by SnapshotBuffers), into which buffer, and
// what becomes of the buffer when the value outgrew it, when the walk fails
// half-way (helpers copying) and after Close.
TEST(SnapshotPipelineTest, CopiesWhileWalkingIntoAnIdleBufferThatFitsAndAgainWhenItDoesNot) {
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  internal::SnapshotBuffers buffers;
  // 24 MiB: one tensor of 20 MiB (copied in 16 MiB pieces), an empty one,
  // four of 1 MiB.
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("big", torch::randn({5 << 20}));
  sd.insert("empty", torch::empty({0}));
  for (int i = 0; i < 4; ++i) sd.insert(absl::StrCat("t", i), torch::randn({1 << 18}));
  // The bytes each tensor node of `flat` would send are those of `values`.
  auto expect_snapshot_of = [](const internal::FlatValue& flat,
                               const c10::Dict<std::string, at::Tensor>& values) {
    size_t tensors = 0;
    for (size_t i = 0; i < flat.input.tree.size(); ++i) {
      const Node& node = flat.input.tree[i];
      if (node.kind != NodeKind::kTensor) continue;
      ++tensors;
      const at::Tensor t = values.at(std::get<std::string>(node.key));
      const uint64_t n = t.numel() * t.element_size();
      ASSERT_EQ(flat.input.bytes[i].size(), n) << i;
      EXPECT_EQ(n == 0 ? 0 : std::memcmp(flat.input.bytes[i].data(), t.data_ptr(), n), 0)
          << std::get<std::string>(node.key);
      if (n > 0) EXPECT_NE(flat.input.bytes[i].data(), t.data_ptr());  // a copy
    }
    EXPECT_EQ(tensors, values.size());
  };

  // No idle buffer yet: nothing is copied while walking.
  {
    auto flat = internal::Flatten(sd, /*snapshot=*/true, &buffers);
    ASSERT_TRUE(flat.ok()) << flat.status();
    expect_snapshot_of(*flat, sd);
    EXPECT_EQ(buffers.copied_while_walking(), 0u);
    EXPECT_EQ(flat->snapshot.numel(), 24 * kMiB);
    buffers.Give(std::move(flat->snapshot));
  }
  // It fits the idle buffer: every byte is copied while walking, into it.
  AddOne(sd);
  {
    auto flat = internal::Flatten(sd, /*snapshot=*/true, &buffers);
    ASSERT_TRUE(flat.ok()) << flat.status();
    const auto snapshotted = CloneStateDict(sd);
    AddOne(sd);  // after the snapshot: not in it
    expect_snapshot_of(*flat, snapshotted);
    EXPECT_EQ(buffers.copied_while_walking(), 24 * kMiB);
    EXPECT_EQ(buffers.idle_bytes(), 0u);  // the idle buffer is this snapshot's
    buffers.Give(std::move(flat->snapshot));
  }
  // 4 MiB more at the end: the first 24 MiB are copied while walking, then
  // everything again into a new buffer; the small one goes back.
  sd.insert("more", torch::randn({1 << 20}));
  {
    auto flat = internal::Flatten(sd, /*snapshot=*/true, &buffers);
    ASSERT_TRUE(flat.ok()) << flat.status();
    expect_snapshot_of(*flat, sd);
    EXPECT_EQ(buffers.copied_while_walking(), 48 * kMiB);
    EXPECT_EQ(flat->snapshot.numel(), 28 * kMiB);
    EXPECT_EQ(buffers.idle_bytes(), 24 * kMiB);
    buffers.Give(std::move(flat->snapshot));
  }
  // A value that cannot be saved after 20 MiB copied while walking (by
  // helper threads, where there are cores): the error, and the idle buffers
  // as they were.
  {
    c10::impl::GenericDict bad(c10::StringType::get(), c10::AnyType::get());
    bad.insert("first", torch::randn({5 << 20}));
    bad.insert("sparse", torch::eye(3).to_sparse());
    auto flat = internal::Flatten(bad, /*snapshot=*/true, &buffers);
    EXPECT_EQ(flat.status().code(), absl::StatusCode::kInvalidArgument) << flat.status();
    EXPECT_EQ(buffers.copied_while_walking(), 68 * kMiB);
    EXPECT_EQ(buffers.idle_bytes(), 52 * kMiB);
  }
  // Closed: the idle buffers are freed, and so is one given back later.
  buffers.Close();
  EXPECT_EQ(buffers.idle_bytes(), 0u);
  buffers.Give(torch::empty({4096}, torch::kByte));
  EXPECT_EQ(buffers.idle_bytes(), 0u);
}

}  // namespace
}  // namespace ckpt::client

#if defined(__SANITIZE_ADDRESS__)
// LibTorch, gRPC and RocksDB keep memory for the life of the process: report
// memory errors, not leaks (also when the binary is run by hand).
extern "C" const char* __asan_default_options() { return "detect_leaks=0"; }
#endif

int main(int argc, char** argv) {
  if (const char* target = std::getenv("CKPT_SAVE_ASYNC_CHILD")) {
    return ckpt::client::ChildMain(target);
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
