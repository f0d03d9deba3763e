// GPU benchmark (issue 12, point 7): save from and load to a GPU through the
// LibTorch client's staging pipeline, beside a bare device<->host copy of the
// same bytes (pinned host memory) and the same save/load from CPU tensors.
// Prints numbers; not a test. Run by scripts/gpu-check.sh on a lent GPU.
//
//   gpu_bench [--scale F]     (GPT-2 small + Adam, ~1.5 GB at scale 1)
//
// The server runs in this process (RocksDB in a fresh directory under
// $TMPDIR), so its CPU work competes with the client's: a lower bound of what
// a separate server process gives. Exit status 2 without a CUDA device.

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "client/client.h"
#include "server/server.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::client {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(const std::function<void()>& body) {
  const auto t0 = Clock::now();
  body();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "gpu_bench: %s: %s\n", what, status.ToString().c_str());
    std::exit(1);
  }
}

int Main(int argc, char** argv) {
  double scale = 1.0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--scale") == 0 && i + 1 < argc) scale = std::atof(argv[++i]);
  }
  if (!torch::cuda::is_available()) {
    std::printf("gpu_bench: no CUDA device here: nothing measured\n");
    return 2;
  }
  const bench::Shapes shapes = bench::Gpt2Adam(scale);
  c10::Dict<std::string, at::Tensor> gpu, cpu;
  uint64_t bytes = 0;
  torch::manual_seed(0);
  for (const auto& [name, shape] : shapes) {
    at::Tensor t = torch::randn(shape, torch::kCUDA);
    gpu.insert(name, t);
    cpu.insert(name, t.cpu().add_(1));  // other bytes: no dedup against the GPU save
    bytes += static_cast<uint64_t>(t.numel()) * 4;
  }
  torch::cuda::synchronize();
  const double gb = static_cast<double>(bytes) / 1e9;
  std::printf("workload: GPT-2 small + Adam at scale %.2f: %zu tensors, %.3f GB, device %s\n",
              scale, shapes.size(), gb, torch::Device(torch::kCUDA, 0).str().c_str());

  // Bare copies of the same bytes through one pinned host buffer.
  at::Tensor pinned = at::empty({static_cast<int64_t>(bytes)},
                                at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto bare = [&](bool to_host) {
    return Seconds([&] {
      int64_t offset = 0;
      for (const auto& e : gpu) {
        const at::Tensor flat = e.value().view({-1}).view(at::kByte);
        at::Tensor slice = pinned.narrow(0, offset, flat.numel());
        if (to_host) {
          slice.copy_(flat, /*non_blocking=*/true);
        } else {
          flat.copy_(slice, /*non_blocking=*/true);
        }
        offset += flat.numel();
      }
      torch::cuda::synchronize();
    });
  };
  bare(true);  // warm up
  const double d2h = bare(true), h2d = bare(false);

  testing::TempDir dir;
  server::ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.store.path = dir.path() + "/db";
  auto server = server::Server::Start(options);
  Check(server.status(), "server");
  auto client = Client::Connect(absl::StrCat("127.0.0.1:", (*server)->port()), {});
  Check(client.status(), "connect");
  Client& c = **client;

  absl::StatusOr<SaveResult> saved;
  const double save_gpu = Seconds([&] { saved = c.Save("bench/gpu", gpu, {}); });
  Check(saved.status(), "save from GPU");
  const double resave_gpu = Seconds([&] { saved = c.Save("bench/gpu", gpu, {}); });
  Check(saved.status(), "incremental save from GPU");
  const double save_cpu = Seconds([&] { saved = c.Save("bench/cpu", cpu, {}); });
  Check(saved.status(), "save from CPU");
  absl::StatusOr<c10::IValue> loaded;
  const double load_gpu = Seconds([&] { loaded = c.Load("bench/gpu", {}); });
  Check(loaded.status(), "load to GPU");
  loaded = c10::IValue();
  c10::Dict<std::string, at::Tensor> into;
  for (const auto& e : gpu) into.insert(e.key(), torch::empty_like(e.value()));
  absl::StatusOr<IncompatibleKeys> keys;
  const double into_gpu = Seconds([&] { keys = c.LoadInto("bench/gpu", into, "", true, {}); });
  Check(keys.status(), "LoadInto GPU tensors");
  for (const auto& e : gpu) {
    if (!into.at(e.key()).equal(e.value())) {
      std::fprintf(stderr, "gpu_bench: %s differs after LoadInto\n", e.key().c_str());
      return 1;
    }
  }
  TorchLoadOptions to_cpu;
  to_cpu.map_location = MapLocation::To("cpu");
  const double load_cpu = Seconds([&] { loaded = c.Load("bench/cpu", to_cpu); });
  Check(loaded.status(), "load to CPU");

  std::printf("%-44s %8s %8s\n", "operation", "seconds", "GB/s");
  auto row = [&](const char* what, double s) {
    std::printf("%-44s %8.3f %8.2f\n", what, s, gb / s);
  };
  row("bare device->host copy (pinned, one buffer)", d2h);
  row("bare host->device copy (pinned, one buffer)", h2d);
  row("ckpt Save from GPU (first: every chunk)", save_gpu);
  row("ckpt Save from GPU again (nothing changed)", resave_gpu);
  row("ckpt Save from CPU (first: every chunk)", save_cpu);
  row("ckpt Load to GPU (fresh tensors)", load_gpu);
  row("ckpt LoadInto existing GPU tensors", into_gpu);
  row("ckpt Load to CPU", load_cpu);
  return 0;
}

}  // namespace
}  // namespace ckpt::client

int main(int argc, char** argv) { return ckpt::client::Main(argc, argv); }
