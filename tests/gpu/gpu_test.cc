// GPU saves and restores: tensors staged through pinned host buffers.
// Always compiled (against Debian's CPU-only LibTorch 1.13 and against the
// CUDA LibTorch 2.x of PyPI's torch); every test skips with a reason where no
// CUDA device is present (as on the build machines). CKPT_REQUIRE_GPU=1 in
// the environment turns those skips into failures, so that a run on a GPU
// machine cannot pass vacuously.
//
// Most cases here are the ordering bugs of issue 14: the caller's current
// stream is kept busy (a sleep kernel) and the tensors are written by kernels
// queued behind it, so a save or load that does not wait for the caller's
// stream reads or writes too early and the values come out wrong.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "client/torch_tree.h"
#include "server/server.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/temp_dir.h"

// CKPT_TORCH_CUDA: the LibTorch we build against has CUDA (set by CMake).
#if CKPT_TORCH_CUDA
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ckpt::client {
namespace {

bool GpuRequired() {
  const char* v = std::getenv("CKPT_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

// Why GPU tests cannot run here, or "" when they can.
std::string NoGpuReason() {
#if !CKPT_TORCH_CUDA
  return "this LibTorch was built without CUDA (build against PyPI torch's LibTorch)";
#else
  if (!torch::cuda::is_available()) {
    return "no CUDA device here (torch::cuda::is_available() is false)";
  }
  return "";
#endif
}

// Skips the test without a device, or fails it under CKPT_REQUIRE_GPU=1.
#define CKPT_REQUIRE_DEVICE()                                           \
  do {                                                                  \
    const std::string reason = NoGpuReason();                           \
    if (!reason.empty()) {                                              \
      if (GpuRequired()) FAIL() << "CKPT_REQUIRE_GPU=1 but " << reason; \
      GTEST_SKIP() << reason;                                           \
    }                                                                   \
  } while (0)

// Queues about a quarter of a second of work on the current stream of the
// current device, so that whatever is queued next runs late.
void BusyCurrentStream() {
#if CKPT_TORCH_CUDA
  at::cuda::sleep(int64_t{1} << 29);  // ~0.27 s at 2 GHz
#endif
}

// Runs `body` on the current device's default stream, then again with a
// non-default current stream (CUDAStreamGuard): saves and loads must order
// themselves after whichever stream is current.
template <typename F>
void OnDefaultAndSideStream(F body) {
  {
    SCOPED_TRACE("default stream");
    body();
  }
#if CKPT_TORCH_CUDA
  {
    SCOPED_TRACE("non-default current stream");
    c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool());
    body();
  }
#endif
}

TorchLoadOptions ToCpu() {
  TorchLoadOptions options;
  options.map_location = MapLocation::To("cpu");
  return options;
}

int DeviceCount() { return static_cast<int>(torch::cuda::device_count()); }

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CKPT_REQUIRE_DEVICE();
    StartServer(1 << 20, 4 << 20);
  }

  void StartServer(uint32_t chunk_size, uint32_t max_chunk_bytes) {
    client_.reset();
    server_.reset();
    server::ServerOptions options =
        testing::TestServerOptions(absl::StrCat(dir_.path(), "/", ++servers_));
    options.store.max_chunk_bytes = max_chunk_bytes;
    options.chunk_size = chunk_size;
    auto server = server::Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    target_ = testing::AddressOf(*server_);
    auto client = Client::Connect(target_, {});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }

  at::Tensor LoadOne(const std::string& name, const std::string& key,
                     const TorchLoadOptions& options = {}) {
    auto loaded = client_->Load(name, options);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    if (!loaded.ok()) return at::Tensor();
    return loaded->toGenericDict().at(key).toTensor();
  }

  testing::TempDir dir_;
  int servers_ = 0;
  std::unique_ptr<server::Server> server_;
  std::string target_;
  std::unique_ptr<Client> client_;
};

TEST_F(GpuTest, SaveFromGpuRestoreToGpuAndCpu) {
  torch::manual_seed(0);
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("big", torch::randn({9, 1024, 1024}, torch::kCUDA));  // 36 MiB: many chunks
  sd.insert("half", torch::randn({333}, torch::kCUDA).to(torch::kHalf));
  sd.insert("transposed", torch::randn({64, 32}, torch::kCUDA).t());
  auto saved = client_->Save("gpu/sd", sd, {});
  ASSERT_TRUE(saved.ok()) << saved.status();
  auto manifest = client_->raw().GetManifest("gpu/sd", 0, "");
  ASSERT_TRUE(manifest.ok());
  EXPECT_EQ(manifest->tree[1].tensor.device, "cuda:0");

  auto back = client_->Load("gpu/sd", {});
  ASSERT_TRUE(back.ok()) << back.status();
  for (const auto& e : sd) {
    at::Tensor t = back->toGenericDict().at(e.key()).toTensor();
    EXPECT_TRUE(t.is_cuda()) << e.key();
    EXPECT_TRUE(t.equal(e.value())) << e.key();
  }
  auto cpu = client_->Load("gpu/sd", ToCpu());
  ASSERT_TRUE(cpu.ok());
  EXPECT_TRUE(cpu->toGenericDict().at("big").toTensor().is_cpu());
  EXPECT_TRUE(cpu->toGenericDict().at("big").toTensor().equal(sd.at("big").cpu()));
}

TEST_F(GpuTest, CpuCheckpointIntoGpuModuleInPlace) {
  auto cpu_model = torch::nn::Linear(512, 512);
  ASSERT_TRUE(client_->Save("gpu/linear", StateDict(*cpu_model), {}).ok());
  auto gpu_model = torch::nn::Linear(512, 512);
  gpu_model->to(torch::kCUDA);
  const void* memory = gpu_model->weight.data_ptr();
  auto keys = client_->LoadInto("gpu/linear", *gpu_model, "", true, {});
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(gpu_model->weight.data_ptr(), memory);
  EXPECT_TRUE(gpu_model->weight.cpu().equal(cpu_model->weight));
}

TEST_F(GpuTest, AsyncSaveSnapshotsGpuTensors) {
  at::Tensor w = torch::randn({1 << 20}, torch::kCUDA);
  at::Tensor before = w.cpu();
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("w", w);
  auto future = client_->SaveAsync("gpu/async", sd, {});
  w.add_(1.0);
  ASSERT_TRUE(future.get().ok());
  EXPECT_TRUE(LoadOne("gpu/async", "w", ToCpu()).equal(before));
}

// Issue 14, fix 1: kernels queued before Save (optimizer.step()) finish
// before any byte is read, also for the .contiguous() copy of a
// non-contiguous tensor and for SaveAsync's snapshot.
TEST_F(GpuTest, SaveRightAfterKernelsOnABusyStreamStoresTheirResult) {
  int round = 0;
  OnDefaultAndSideStream([&] {
    const std::string name = absl::StrCat("gpu/busy-save", round++);
    at::Tensor w = torch::zeros({16 << 20}, torch::kCUDA);    // 64 MiB, 64 chunks
    at::Tensor m = torch::zeros({2048, 1024}, torch::kCUDA);  // saved transposed
    at::Tensor a = torch::zeros({1 << 20}, torch::kCUDA);     // saved by SaveAsync
    BusyCurrentStream();
    w.fill_(42);
    m.fill_(42);
    c10::Dict<std::string, at::Tensor> sd;
    sd.insert("w", w);
    sd.insert("mt", m.t());
    auto saved = client_->Save(name, sd, {});
    ASSERT_TRUE(saved.ok()) << saved.status();
    EXPECT_TRUE(LoadOne(name, "w", ToCpu()).eq(42).all().item<bool>());
    EXPECT_TRUE(LoadOne(name, "mt", ToCpu()).eq(42).all().item<bool>());

    BusyCurrentStream();
    a.fill_(42);
    c10::Dict<std::string, at::Tensor> async_sd;
    async_sd.insert("a", a);
    auto future = client_->SaveAsync(name + "-async", async_sd, {});
    a.fill_(7);  // after the snapshot: not saved
    auto result = future.get();
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_TRUE(LoadOne(name + "-async", "a", ToCpu()).eq(42).all().item<bool>());
  });
}

// Issue 14, fix 2: LoadInto waits for the kernels queued on the caller's
// stream (here a fill_ that would otherwise overwrite the restored values)
// and its result is ready for the caller's next kernels.
TEST_F(GpuTest, LoadIntoWhileTheStreamIsBusyKeepsTheCheckpointValues) {
  at::Tensor values = torch::arange(0, 8 << 20, torch::kFloat);  // 32 MiB
  c10::Dict<std::string, at::Tensor> saved;
  saved.insert("w", values);
  ASSERT_TRUE(client_->Save("gpu/busy-load", saved, {}).ok());
  auto model = torch::nn::Linear(256, 256);
  ASSERT_TRUE(client_->Save("gpu/busy-linear", StateDict(*model), {}).ok());

  OnDefaultAndSideStream([&] {
    at::Tensor dst = torch::zeros({8 << 20}, torch::kCUDA);
    BusyCurrentStream();
    dst.fill_(-1);  // queued before the load: must not land after it
    c10::Dict<std::string, at::Tensor> into;
    into.insert("w", dst);
    auto keys = client_->LoadInto("gpu/busy-load", into, "", true, {});
    ASSERT_TRUE(keys.ok()) << keys.status();
    // The caller's next kernel (queued right after, on its stream) sees the
    // values too.
    at::Tensor same = dst.eq(values.to(dst.device())).all();
    EXPECT_TRUE(same.item<bool>());
    EXPECT_TRUE(dst.cpu().equal(values));

    auto gpu_model = torch::nn::Linear(256, 256);
    gpu_model->to(torch::kCUDA);
    BusyCurrentStream();
    {
      torch::NoGradGuard no_grad;
      for (auto& p : gpu_model->parameters()) p.fill_(0);
    }
    auto module_keys = client_->LoadInto("gpu/busy-linear", *gpu_model, "", true, {});
    ASSERT_TRUE(module_keys.ok()) << module_keys.status();
    EXPECT_TRUE(gpu_model->weight.cpu().equal(model->weight));
    EXPECT_TRUE(gpu_model->bias.cpu().equal(model->bias));
  });
}

// Issue 14, fix 2: a fresh allocation on the load path may reuse memory whose
// last kernels are still queued on the caller's stream.
TEST_F(GpuTest, LoadIntoFreshMemoryWaitsForItsPreviousKernels) {
  at::Tensor values = torch::arange(0, 8 << 20, torch::kFloat);
  c10::Dict<std::string, at::Tensor> saved;
  saved.insert("w", values);
  ASSERT_TRUE(client_->Save("gpu/reuse", saved, {}).ok());
  OnDefaultAndSideStream([&] {
    {
      at::Tensor old = torch::empty({8 << 20}, torch::kCUDA);
      BusyCurrentStream();
      old.fill_(-1);
    }  // freed while its fill_ is still queued: the load's at::empty gets it
    at::Tensor loaded = LoadOne("gpu/reuse", "w");
    ASSERT_TRUE(loaded.defined());
    EXPECT_TRUE(loaded.is_cuda());
    EXPECT_TRUE(loaded.cpu().equal(values));
  });
}

TEST_F(GpuTest, MultiGpuSaveLoadMapAndLoadIntoAnotherDevice) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs 2 CUDA devices, have " << DeviceCount();
  at::Tensor values = torch::randn({3 << 20});
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("w", values.to(torch::Device(torch::kCUDA, 1)));
  ASSERT_TRUE(client_->Save("gpu/multi", sd, {}).ok());

  at::Tensor same = LoadOne("gpu/multi", "w");  // no mapping: stays on cuda:1
  ASSERT_TRUE(same.defined());
  EXPECT_EQ(same.device(), torch::Device(torch::kCUDA, 1));
  EXPECT_TRUE(same.cpu().equal(values));

  TorchLoadOptions mapped;
  mapped.map_location.mapping = {{"cuda:1", "cuda:0"}};
  at::Tensor moved = LoadOne("gpu/multi", "w", mapped);
  ASSERT_TRUE(moved.defined());
  EXPECT_EQ(moved.device(), torch::Device(torch::kCUDA, 0));
  EXPECT_TRUE(moved.cpu().equal(values));

#if CKPT_TORCH_CUDA
  // LoadInto a cuda:1 tensor while the current device is 0, with cuda:1's
  // current stream busy: the load orders itself after cuda:1's stream.
  c10::cuda::CUDAGuard current(0);
  at::Tensor dst = torch::zeros({3 << 20}, torch::Device(torch::kCUDA, 1));
  {
    c10::cuda::CUDAGuard on1(1);
    BusyCurrentStream();
    dst.fill_(-1);
  }
  c10::Dict<std::string, at::Tensor> into;
  into.insert("w", dst);
  auto keys = client_->LoadInto("gpu/multi", into, "", true, {});
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_TRUE(dst.cpu().equal(values));

  // And a save from cuda:1 right after its kernels, current device 0.
  at::Tensor w1 = torch::zeros({4 << 20}, torch::Device(torch::kCUDA, 1));
  {
    c10::cuda::CUDAGuard on1(1);
    BusyCurrentStream();
    w1.fill_(42);
  }
  c10::Dict<std::string, at::Tensor> sd1;
  sd1.insert("w", w1);
  ASSERT_TRUE(client_->Save("gpu/multi-busy", sd1, {}).ok());
  EXPECT_TRUE(LoadOne("gpu/multi-busy", "w", ToCpu()).eq(42).all().item<bool>());
#endif
}

// Issue 8, point 12: one staging per device per save, its pinned memory
// bounded by a few chunks whatever the number of tensors.
TEST_F(GpuTest, ThousandsOfSmallTensorsShareBoundedPinnedStaging) {
  constexpr int kTensors = 3000;
  c10::Dict<std::string, at::Tensor> sd;
  for (int i = 0; i < kTensors; ++i) {
    sd.insert(absl::StrCat("t", i), torch::full({257}, static_cast<double>(i), torch::kCUDA));
  }
  auto flat = internal::Flatten(c10::IValue(sd), /*snapshot=*/false);
  ASSERT_TRUE(flat.ok()) << flat.status();
  ASSERT_EQ(flat->stagings.size(), 1u);
  ASSERT_EQ(flat->device_sources.size(), static_cast<size_t>(kTensors));
  std::vector<uint8_t> buffer(257 * 4);
  for (auto& source : flat->device_sources) {
    ASSERT_TRUE(source->Read(0, absl::MakeSpan(buffer)).ok());
  }
  EXPECT_LE(flat->stagings[0]->pinned_bytes(),
            static_cast<size_t>(internal::SaveStaging::kSlots) * buffer.size());

  auto saved = client_->Save("gpu/many", sd, {});
  ASSERT_TRUE(saved.ok()) << saved.status();
  auto loaded = client_->Load("gpu/many", {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto dict = loaded->toGenericDict();
  ASSERT_EQ(dict.size(), static_cast<size_t>(kTensors));
  for (int i = 0; i < kTensors; i += 97) {
    const std::string key = absl::StrCat("t", i);
    EXPECT_TRUE(dict.at(key).toTensor().equal(sd.at(key))) << key;
  }
}

// Issue 14, fix 6: the staging is sized from the negotiated chunk size: the
// server's default 4 MiB (the old fixed buffer size) and a larger one.
TEST_F(GpuTest, ChunkSizeOfFourMiBAndAboveStagesWholeChunks) {
  for (uint32_t chunk : {4u << 20, 8u << 20}) {
    SCOPED_TRACE(absl::StrCat("chunk size ", chunk));
    StartServer(chunk, 16 << 20);
    // Not a multiple of the chunk size: the last chunk is short.
    at::Tensor w = torch::randint(0, 255, {(20 << 20) + 12345},
                                  torch::TensorOptions().dtype(torch::kUInt8).device(torch::kCUDA));
    c10::Dict<std::string, at::Tensor> sd;
    sd.insert("w", w);
    auto saved = client_->Save("gpu/chunk", sd, {});
    ASSERT_TRUE(saved.ok()) << saved.status();
    EXPECT_EQ(saved->chunks_total, (static_cast<uint64_t>(w.numel()) + chunk - 1) / chunk);
    at::Tensor back = LoadOne("gpu/chunk", "w");
    ASSERT_TRUE(back.defined());
    EXPECT_TRUE(back.equal(w));
  }
}

TEST_F(GpuTest, PartlyChangedLargeTensorResavedSendsOnlyChangedChunks) {
  at::Tensor w = torch::randn({16 << 20}, torch::kCUDA);  // 64 MiB: 64 chunks of 1 MiB
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("w", w);
  auto first = client_->Save("gpu/partly", sd, {});
  ASSERT_TRUE(first.ok()) << first.status();
  BusyCurrentStream();
  w.narrow(0, 5 << 18, 1000).add_(1);  // inside chunk 5, queued behind the sleep
  auto second = client_->Save("gpu/partly", sd, {});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->chunks_sent, 1u);
  at::Tensor back = LoadOne("gpu/partly", "w");
  ASSERT_TRUE(back.defined());
  EXPECT_TRUE(back.equal(w));
  TorchLoadOptions v1;
  v1.version = 1;
  EXPECT_FALSE(LoadOne("gpu/partly", "w", v1).equal(w));
}

TEST_F(GpuTest, ConcurrentSavesAndLoadsFromSeveralThreads) {
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::vector<std::string> errors(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        const std::string name = absl::StrCat("gpu/concurrent", t);
        at::Tensor w = torch::full({3 << 20}, static_cast<double>(t * 10 + round), torch::kCUDA);
        BusyCurrentStream();
        w.add_(0.5);
        c10::Dict<std::string, at::Tensor> sd;
        sd.insert("w", w);
        auto saved = client_->Save(name, sd, {});
        if (!saved.ok()) {
          errors[t] = saved.status().ToString();
          return;
        }
        auto loaded = client_->Load(name, {});
        if (!loaded.ok()) {
          errors[t] = loaded.status().ToString();
          return;
        }
        if (!loaded->toGenericDict().at("w").toTensor().equal(w)) {
          errors[t] = absl::StrCat("round ", round, ": loaded values differ");
          return;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(errors[t], "") << "thread " << t;
}

TEST_F(GpuTest, SaveAsyncDuringASave) {
  // 128 MiB in 32 tensors: two node batches of 64 MiB, so the progress
  // callback (after the first) fires while the save is still running.
  c10::Dict<std::string, at::Tensor> big;
  for (int i = 0; i < 32; ++i)
    big.insert(absl::StrCat("big", i), torch::randn({1 << 20}, torch::kCUDA));
  at::Tensor small = torch::randn({1 << 20}, torch::kCUDA);
  at::Tensor small_before = small.clone();
  std::atomic<bool> started{false};
  absl::StatusOr<SaveResult> big_result = absl::UnknownError("not run");
  std::thread saver([&] {
    const c10::Dict<std::string, at::Tensor>& sd = big;
    SaveOptions options;
    options.progress = [&](uint64_t, uint64_t) { started = true; };
    big_result = client_->Save("gpu/during-big", sd, options);
    started = true;
  });
  while (!started) std::this_thread::yield();
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("small", small);
  auto future = client_->SaveAsync("gpu/during-small", sd, {});
  small.mul_(3);
  auto small_result = future.get();
  saver.join();
  ASSERT_TRUE(big_result.ok()) << big_result.status();
  ASSERT_TRUE(small_result.ok()) << small_result.status();
  auto loaded_big = client_->Load("gpu/during-big", {});
  ASSERT_TRUE(loaded_big.ok()) << loaded_big.status();
  for (const auto& e : big) {
    EXPECT_TRUE(loaded_big->toGenericDict().at(e.key()).toTensor().equal(e.value())) << e.key();
  }
  EXPECT_TRUE(LoadOne("gpu/during-small", "small").equal(small_before));
}

TEST_F(GpuTest, BoolBFloat16Complex128ZeroDimAndEmptyTensors) {
  torch::manual_seed(1);
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("bool", torch::rand({1001}, torch::kCUDA).gt(0.5));
  sd.insert("bf16", torch::randn({513, 7}, torch::kCUDA).to(torch::kBFloat16));
  sd.insert("c128",
            torch::randn({300},
                         torch::TensorOptions().dtype(torch::kComplexDouble).device(torch::kCUDA)));
  sd.insert("scalar", torch::tensor(3.5, torch::TensorOptions().device(torch::kCUDA)));
  sd.insert("empty", torch::empty({0, 5}, torch::kCUDA));
  ASSERT_TRUE(client_->Save("gpu/dtypes", sd, {}).ok());
  auto loaded = client_->Load("gpu/dtypes", {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (const auto& e : sd) {
    at::Tensor t = loaded->toGenericDict().at(e.key()).toTensor();
    EXPECT_TRUE(t.is_cuda()) << e.key();
    EXPECT_EQ(t.scalar_type(), e.value().scalar_type()) << e.key();
    EXPECT_EQ(t.sizes(), e.value().sizes()) << e.key();
    EXPECT_TRUE(t.equal(e.value())) << e.key();
  }
  // In place too.
  c10::Dict<std::string, at::Tensor> into;
  for (const auto& e : sd) into.insert(e.key(), torch::zeros_like(e.value()));
  ASSERT_TRUE(client_->LoadInto("gpu/dtypes", into, "", true, {}).ok());
  for (const auto& e : sd) EXPECT_TRUE(into.at(e.key()).equal(e.value())) << e.key();
}

TEST_F(GpuTest, NonContiguousSourcesAndDestinations) {
  torch::manual_seed(2);
  at::Tensor base = torch::randn({1024, 768}, torch::kCUDA);
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("transposed", base.t());
  sd.insert("strided", base.slice(0, 0, 1024, 3).slice(1, 1, 768, 2));
  sd.insert("expanded", torch::randn({1, 64}, torch::kCUDA).expand({512, 64}));
  ASSERT_TRUE(client_->Save("gpu/noncontig", sd, {}).ok());
  auto loaded = client_->Load("gpu/noncontig", {});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (const auto& e : sd) {
    EXPECT_TRUE(loaded->toGenericDict().at(e.key()).toTensor().equal(e.value())) << e.key();
  }
  // Destinations that are views: a transposed one and a strided one.
  at::Tensor holder_t = torch::zeros({1024, 768}, torch::kCUDA);
  at::Tensor holder_s = torch::zeros({1024, 768}, torch::kCUDA);
  c10::Dict<std::string, at::Tensor> into;
  into.insert("transposed", holder_t.t());  // [768, 1024], non-contiguous
  into.insert("strided", holder_s.slice(0, 0, 1024, 3).slice(1, 1, 768, 2));
  BusyCurrentStream();
  holder_t.fill_(-1);
  holder_s.fill_(-1);
  TorchLoadOptions only;
  only.patterns = {"transposed", "strided"};
  auto keys = client_->LoadInto("gpu/noncontig", into, "", true, only);
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_TRUE(holder_t.equal(base));
  EXPECT_TRUE(into.at("strided").equal(sd.at("strided")));
  // Elements outside the strided view are untouched.
  EXPECT_EQ(holder_s[1][0].item<float>(), -1.0f);
}

// Issue 14, fix 3: a load that fails part-way (here its deadline) leaves no
// copy in flight into memory that is freed when it returns.
TEST_F(GpuTest, LoadAbortedByItsDeadlineThenNewAllocationsStayIntact) {
  at::Tensor values = torch::randn({64 << 20});  // 256 MiB
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("w", values);
  ASSERT_TRUE(client_->Save("gpu/deadline", sd, {}).ok());
  bool aborted = false;
  for (int ms : {200, 50, 10, 2}) {
    SCOPED_TRACE(absl::StrCat("timeout ", ms, " ms"));
    BusyCurrentStream();  // the uploads queue up behind it
    TorchLoadOptions options;
    options.timeout = absl::Milliseconds(ms);
    auto loaded = client_->Load("gpu/deadline", options);
    if (loaded.ok()) {
      EXPECT_TRUE(loaded->toGenericDict().at("w").toTensor().cpu().equal(values));
      continue;
    }
    aborted = true;
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDeadlineExceeded) << loaded.status();
    // The freed tensor's memory goes to new tensors; no late copy lands there.
    std::vector<at::Tensor> fresh;
    for (int i = 0; i < 8; ++i) fresh.push_back(torch::full({8 << 20}, 7.0, torch::kCUDA));
    torch::cuda::synchronize();
    for (const at::Tensor& t : fresh) EXPECT_TRUE(t.eq(7).all().item<bool>());
  }
  EXPECT_TRUE(aborted) << "no load hit its deadline: the test did not test anything";
}

// Issue 14, fix 4: a CUDA failure in the staging is a status, not a
// c10::Error escaping the client. Without a usable device (here: a CPU-only
// LibTorch, or a CUDA one without a driver) creating the staging fails, and
// must say so as an Internal status naming the device.
TEST(GpuStagingErrorTest, StagingWithoutAUsableDeviceIsAStatusNotAnException) {
  if (NoGpuReason().empty()) GTEST_SKIP() << "a CUDA device is present: nothing fails here";
  const c10::Device device(c10::kCUDA, 0);
  const c10::Stream stream(c10::Stream::DEFAULT, device);
  absl::StatusOr<std::shared_ptr<internal::SaveStaging>> staging;
  absl::StatusOr<std::unique_ptr<internal::DeviceUploader>> uploader;
  EXPECT_NO_THROW(staging = internal::SaveStaging::Create(device, stream));
  EXPECT_NO_THROW(uploader = internal::DeviceUploader::Create(device, stream));
  ASSERT_FALSE(staging.ok());
  EXPECT_EQ(staging.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(staging.status().message().find("staging for cuda:0"), std::string::npos)
      << staging.status();
  ASSERT_FALSE(uploader.ok());
  EXPECT_EQ(uploader.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(uploader.status().message().find("staging for cuda:0"), std::string::npos)
      << uploader.status();
}

}  // namespace
}  // namespace ckpt::client
