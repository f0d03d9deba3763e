// SPEC §8's workloads through the LibTorch client library, side by side in
// one run with the baselines: LibTorch torch::pickle_save to a local file
// (+fsync) and torch::pickle_load, Python torch.save / torch.load of the same
// shapes (if a Python with torch is found), and the disk's fsync'd write.
//
//   bench_torch [--scale F] [--workload gpt2|small|all] [--python PATH|COMMAND]
//               [--server PATH]   (--help says more)
//
// The server is the real ckpt-server binary on a fresh directory next to the
// baseline files (same disk).

#include <fcntl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "client/client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Python torch.save (+fsync) and torch.load of the same shapes; returns
// {save GB/s, load GB/s} or {0, 0} when no Python with torch is found.
std::pair<double, double> PythonBaseline(const std::string& python, const Workload& w,
                                         const std::string& dir) {
  const std::string shapes = dir + "/shapes.txt";
  {
    std::ofstream out(shapes);
    for (const auto& [k, s] : w.shapes) {
      out << k;
      for (int64_t d : s) out << " " << d;
      out << "\n";
    }
  }
  const std::string script = dir + "/baseline.py";
  std::ofstream(script) << R"(import os, sys, time, torch
shapes = [l.split() for l in open(sys.argv[1])]
sd = {l[0]: torch.randn([int(d) for d in l[1:]]) for l in shapes}
total = sum(t.numel() * t.element_size() for t in sd.values())
path = sys.argv[2]
t0 = time.perf_counter()
with open(path, 'wb') as f:
    torch.save(sd, f); f.flush(); os.fsync(f.fileno())
save = time.perf_counter() - t0
del sd
t0 = time.perf_counter()
sd = torch.load(path)
load = time.perf_counter() - t0
print(total / save / 1e9, total / load / 1e9)
os.unlink(path)
)";
  auto run = testing::RunCommand({python, script, shapes, dir + "/py.pt"});
  if (run.exit_code != 0) return {0, 0};
  std::istringstream in(run.out);
  double s = 0, l = 0;
  in >> s >> l;
  return {s, l};
}

int Run(int argc, char** argv) {
  std::string python = "/usr/bin/python3";
  CLI::App app{
      "bench_torch: SPEC §8's workloads through the LibTorch client beside "
      "torch::pickle_save/load and Python torch.save/torch.load in one run (prints "
      "numbers; about 1.5 GB of memory and disk at scale 1)"};
  WorkloadOptions workload_options;
  AddWorkloadOptions(app, &workload_options);
  app.add_option("--python", python,
                 "Python with torch for the baseline: a path or a command name looked up in PATH")
      ->capture_default_str();
  bool no_python = false;
  app.add_flag("--no-python", no_python, "skip the Python torch.save/torch.load baseline");
  CLI11_PARSE(app, argc, argv);
  const std::string python_path = FindProgram(python);
  if (python_path.empty() && app.count("--python") > 0) {
    std::fprintf(stderr, "bench_torch: --python %s: no such program (path or command in PATH)\n",
                 python.c_str());
    return 2;
  }
  if (!python_path.empty()) python = python_path;
  testing::TempDir dir;
  const double disk = DiskWriteGBps(dir.path());
  std::printf("ckpt LibTorch client benchmark, scale %.3g\n", workload_options.scale);
  std::printf("disk fsync'd sequential write: %.2f GB/s\n\n", disk);
  const std::vector<Workload> workloads = SelectWorkloads(workload_options);

  int index = 0;
  for (const Workload& w : workloads) {
    auto server = testing::ServerProcess::Start(absl::StrCat(dir.path(), "/db", index++));
    if (!server.ok()) return 1;
    auto client = client::Client::Connect((*server)->address(), {});
    if (!client.ok()) return 1;
    torch::manual_seed(0);
    c10::Dict<std::string, at::Tensor> sd;
    uint64_t total = 0;
    for (const auto& [k, s] : w.shapes) {
      at::Tensor t = torch::randn(s);
      total += t.numel() * t.element_size();
      // state_dict-style dotted keys (LoadInto treats '/' as nesting).
      std::string key = k;
      std::replace(key.begin(), key.end(), '/', '.');
      sd.insert(key, t);
    }
    std::printf("== %s: %zu tensors, %.1f MB\n", w.name.c_str(), w.shapes.size(), total / 1e6);

    // Memory each operation adds on top of the model (client) and on top
    // of the idle server: the peak resident set is reset before each.
    const pid_t server_pid = (*server)->pid();
    // The server's resident set also counts the pages of the chunk files it
    // maps (page cache, reclaimable); its heap is reported apart.
    struct Peak {
      double client = 0, server = 0, server_heap = 0;
    };
    double client_base = 0, server_base = 0;
    std::unique_ptr<AnonPeakSampler> server_heap;
    auto start_peak = [&] {
      client_base = RssMiB(getpid());
      server_base = RssMiB(server_pid);
      ResetPeakRss(getpid());
      ResetPeakRss(server_pid);
      server_heap = std::make_unique<AnonPeakSampler>(server_pid);
    };
    auto end_peak = [&] {
      return Peak{std::max(0.0, PeakRssMiB(getpid()) - client_base),
                  std::max(0.0, PeakRssMiB(server_pid) - server_base), server_heap->Stop()};
    };

    start_peak();
    auto t0 = Clock::now();
    auto full = (*client)->Save("bench/" + w.name, sd, {});
    const double save_s = Since(t0);
    const Peak save_peak = end_peak();
    if (!full.ok()) {
      std::fprintf(stderr, "%s\n", full.status().ToString().c_str());
      return 1;
    }
    const double save = total / save_s / 1e9;

    // The incremental save's change: every 10th tensor, skipping those that
    // would take the changed bytes past 10 % of the total (GPT-2's embedding
    // alone is 30 %): ~10 % of the tensors holding ~10 % of the bytes.
    uint64_t changed_bytes = 0;
    size_t changed = 0;
    {
      torch::NoGradGuard no_grad;
      int i = 0;
      for (auto& e : sd) {
        const uint64_t n = e.value().numel() * e.value().element_size();
        if (i++ % 10 == 0 && changed_bytes + n <= total / 10) {
          e.value().add_(1.0);
          changed_bytes += n;
          ++changed;
        }
      }
    }
    t0 = Clock::now();
    auto inc = (*client)->Save("bench/" + w.name, sd, {});
    const double inc_s = Since(t0);

    // Five async saves in a row, each waited for: the first snapshots into
    // fresh memory, the others into the buffer the client kept. Beside a
    // single-thread memcpy of the same bytes into warm memory (best of 3).
    std::vector<double> stalls;
    double async_total_s = 0;
    absl::StatusOr<client::SaveResult> async_result;
    for (int i = 0; i < 5 && (i == 0 || async_result.ok()); ++i) {
      t0 = Clock::now();
      auto future = (*client)->SaveAsync("bench/" + w.name + "-async", sd, {});
      stalls.push_back(Since(t0));
      async_result = future.get();
      if (i == 0) async_total_s = Since(t0);
    }
    double memcpy_s = 1e9;
    {
      std::vector<uint8_t> warm(total);
      std::memset(warm.data(), 1, warm.size());
      for (int r = 0; r < 3; ++r) {
        t0 = Clock::now();
        uint64_t off = 0;
        for (const auto& e : sd) {
          const uint64_t n = e.value().numel() * e.value().element_size();
          std::memcpy(warm.data() + off, e.value().data_ptr(), n);
          off += n;
        }
        memcpy_s = std::min(memcpy_s, Since(t0));
      }
    }
    std::vector<double> later(stalls.begin() + 1, stalls.end());
    std::sort(later.begin(), later.end());
    const double later_median = later.empty() ? 0 : later[later.size() / 2];

    // Restore into the existing tensors, and as fresh tensors.
    start_peak();
    t0 = Clock::now();
    auto into = (*client)->LoadInto("bench/" + w.name, sd, "", true, {});
    const double into_s = Since(t0);
    const Peak load_peak = end_peak();
    t0 = Clock::now();
    auto fresh = (*client)->Load("bench/" + w.name, {});
    const double fresh_s = Since(t0);
    if (!inc.ok() || !async_result.ok() || !into.ok() || !fresh.ok()) {
      std::fprintf(stderr, "a step failed\n");
      return 1;
    }
    fresh = c10::IValue();  // free

    // LibTorch pickle baselines.
    const std::string file = dir.path() + "/pickle.pt";
    t0 = Clock::now();
    {
      std::vector<char> bytes = torch::pickle_save(c10::IValue(sd));
      int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (write(fd, bytes.data(), bytes.size()) < 0) return 1;
      fsync(fd);
      close(fd);
    }
    const double pickle_save = total / Since(t0) / 1e9;
    t0 = Clock::now();
    {
      std::ifstream in(file, std::ios::binary);
      std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
      c10::IValue back = torch::pickle_load(bytes);
    }
    const double pickle_load = total / Since(t0) / 1e9;
    unlink(file.c_str());
    auto [py_save, py_load] =
        no_python ? std::pair<double, double>{0, 0} : PythonBaseline(python, w, dir.path());

    const double load = total / into_s / 1e9;
    std::printf("  %-34s %6.2f GB/s   (disk x%.2f, python x%.2f, pickle_save x%.2f)\n", "save",
                save, save / disk, py_save > 0 ? save / py_save : 0, save / pickle_save);
    std::printf(
        "  %-34s %6.3f s (%.0f%% of full; target <= 15%%: %s), wire %.1f MB (%.1f%%); changed "
        "%zu of %zu tensors, %.1f%% of bytes\n",
        "incremental save (10% changed)", inc_s, 100 * inc_s / save_s,
        inc_s <= 0.15 * save_s ? "met" : "NOT met", inc->bytes_sent / 1e6,
        100.0 * inc->bytes_sent / full->bytes_sent, changed, w.shapes.size(),
        100.0 * changed_bytes / total);
    std::printf("  %-34s %6.3f s snapshot, %.3f s to commit\n", "async save", stalls[0],
                async_total_s);
    if (!later.empty()) {
      std::printf(
          "  %-34s first %.3f s, then median %.3f s (%.3f-%.3f) = x%.2f memcpy (%.3f s, "
          "%.1f GB/s); target <= x1.5: %s\n",
          "async save stall (5 in a row)", stalls[0], later_median, later.front(), later.back(),
          later_median / memcpy_s, memcpy_s, total / memcpy_s / 1e9,
          later_median <= 1.5 * memcpy_s ? "met" : "NOT met");
    }
    std::printf("  %-34s %6.2f GB/s   (python x%.2f, pickle_load x%.2f)\n",
                "load into existing tensors", load, py_load > 0 ? load / py_load : 0,
                load / pickle_load);
    std::printf("  %-34s %6.2f GB/s\n", "load as new tensors", total / fresh_s / 1e9);
    std::printf("  %-34s save %.2f GB/s, load %.2f GB/s\n", "LibTorch pickle_save/load",
                pickle_save, pickle_load);
    if (py_save > 0) {
      std::printf("  %-34s save %.2f GB/s, load %.2f GB/s (%s)\n", "Python torch.save/load",
                  py_save, py_load, python.c_str());
    } else {
      std::printf("  %-34s unavailable (%s has no torch)\n", "Python torch.save/load",
                  python.c_str());
    }
    const double model_mib = total / 1048576.0;
    std::printf("  %-34s client +%.0f MiB (model %.0f MiB); server +%.0f MiB (heap +%.0f)\n",
                "peak memory added by save", save_peak.client, model_mib, save_peak.server,
                save_peak.server_heap);
    std::printf("  %-34s client +%.0f MiB; server +%.0f MiB (heap +%.0f)\n",
                "peak memory added by load into", load_peak.client, load_peak.server,
                load_peak.server_heap);
    std::printf("  %-34s client <= model + 64 MiB: %s\n\n", "target",
                std::max(save_peak.client, load_peak.client) <= 64 ? "met" : "NOT met");
    client->reset();
    (*server)->Terminate();
  }
  return 0;
}

}  // namespace
}  // namespace ckpt::bench

int main(int argc, char** argv) { return ckpt::bench::Run(argc, argv); }
