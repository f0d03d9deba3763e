// Save/load throughput of the ckpt service over loopback, with SPEC §8's
// workloads as raw tensors (no LibTorch): a GPT-2-small-shaped state_dict with
// Adam state (592 tensors, ~1.5 GB) and 20,000 small tensors (~310 MB).
//
// Prints, per workload: full save GB/s, incremental save (10 % of tensors
// changed) time and bytes on the wire, load GB/s into existing buffers, the
// server's and this process's peak RSS, and ratios against the disk's
// fsync'd sequential write speed measured in the same run.
//
//   bench_service [--scale F] [--workload gpt2|small|all]
//                 [--server PATH] [--dir DIR]   (--help says more)
// The server is the real ckpt-server binary, started on a fresh directory.

#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "client/raw_client.h"
#include "common/tensor_stats.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Restores into buffers that already exist (like loading into a module).
class IntoBuffers : public client::LoadSink {
 public:
  explicit IntoBuffers(std::vector<std::string>* buffers) : buffers_(buffers) {}
  absl::Status OnTree(const VersionInfo&, const Tree& tree) override {
    if (tree.size() != buffers_->size()) return absl::InternalError("tree size mismatch");
    return absl::OkStatus();
  }
  absl::Status OnData(size_t node, uint64_t offset, absl::string_view bytes) override {
    std::memcpy((*buffers_)[node].data() + offset, bytes.data(), bytes.size());
    return absl::OkStatus();
  }

 private:
  std::vector<std::string>* buffers_;
};

int Run(int argc, char** argv) {
  std::string dir_arg;
  CLI::App app{
      "bench_service: save/load throughput of ckpt-server over loopback with SPEC §8's "
      "workloads as raw tensors (prints numbers; about 1.5 GB of disk at scale 1)"};
  WorkloadOptions workload_options;
  AddWorkloadOptions(app, &workload_options);
  app.add_option("--dir", dir_arg,
                 "directory for the server's data and the disk probe "
                 "(default: $TMPDIR or /tmp)");
  CLI11_PARSE(app, argc, argv);
  if (!dir_arg.empty()) setenv("TMPDIR", dir_arg.c_str(), 1);
  testing::TempDir dir;
  std::printf("ckpt service benchmark (raw tensors over loopback), scale %.3g\n",
              workload_options.scale);
  const double disk = DiskWriteGBps(dir.path(), 1ull << 30);
  std::printf("disk fsync'd sequential write (1 GiB, 4 MiB blocks): %.2f GB/s\n\n", disk);

  const std::vector<Workload> workloads = SelectWorkloads(workload_options);

  int index = 0;
  for (const Workload& w : workloads) {
    auto server = testing::ServerProcess::Start(absl::StrCat(dir.path(), "/db", index++));
    if (!server.ok()) {
      std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
      return 1;
    }
    auto client = client::RawClient::Connect((*server)->address(), {});
    if (!client.ok()) return 1;
    Data data = Materialize(w, 42);
    std::printf("== %s: %zu tensors, %.1f MB\n", w.name.c_str(), w.shapes.size(), data.total / 1e6);

    // The server's heap (RssAnon) per operation; its resident set also
    // counts the mapped pages of chunk files it reads (page cache).
    auto save_heap = std::make_unique<AnonPeakSampler>((*server)->pid());
    auto t0 = Clock::now();
    auto full = (*client)->Save("bench/" + w.name, data.input, {});
    auto t1 = Clock::now();
    const double save_heap_mib = save_heap->Stop();
    if (!full.ok()) {
      std::fprintf(stderr, "save: %s\n", full.status().ToString().c_str());
      return 1;
    }
    const double save_s = Seconds(t0, t1);
    const double save_gbps = data.total / save_s / 1e9;
    std::printf("  save        %6.2f GB/s  %7.3f s  wire %.1f MB  (%.0f%% of disk)\n", save_gbps,
                save_s, full->bytes_sent / 1e6, 100 * save_gbps / disk);

    // What the per-tensor statistics cost: the pass alone on one core (the
    // client runs it in its hashing thread, overlapped with sending), and
    // a full save without them into another namespace (no dedup across).
    t0 = Clock::now();
    volatile double kept = 0;  // keeps the pass from being optimised away
    for (size_t node : data.tensor_nodes) {
      kept = kept + ComputeStats(DType::kFloat32, data.bytes[node]).mean;
    }
    t1 = Clock::now();
    const double stats_s = Seconds(t0, t1);
    client::SaveOptions no_stats;
    no_stats.tensor_stats = false;
    t0 = Clock::now();
    auto plain = (*client)->Save("nostats/" + w.name, data.input, no_stats);
    t1 = Clock::now();
    if (!plain.ok()) return 1;
    const double plain_s = Seconds(t0, t1);
    std::printf(
        "  statistics  pass %.2f GB/s on one core = %.1f%% of the save's time (upper "
        "bound); save without them %.3f s: with/without x%.3f\n",
        data.total / stats_s / 1e9, 100 * stats_s / save_s, plain_s, save_s / plain_s);

    // Change 10 % of the tensors (one byte in the first chunk of each).
    for (size_t i = 0; i < data.tensor_nodes.size(); i += 10) {
      std::string& b = data.bytes[data.tensor_nodes[i]];
      if (!b.empty()) b[0] ^= 1;
    }
    t0 = Clock::now();
    auto inc = (*client)->Save("bench/" + w.name, data.input, {});
    t1 = Clock::now();
    if (!inc.ok()) return 1;
    const double inc_s = Seconds(t0, t1);
    std::printf("  incremental %7.3f s (%.0f%% of full)  wire %.1f MB (%.1f%% of full)\n", inc_s,
                100 * inc_s / save_s, inc->bytes_sent / 1e6,
                100.0 * inc->bytes_sent / std::max<uint64_t>(1, full->bytes_sent));

    std::vector<std::string> buffers(data.bytes.size());
    for (size_t i = 0; i < buffers.size(); ++i) buffers[i].resize(data.bytes[i].size());
    IntoBuffers sink(&buffers);
    double best_load = 0;
    AnonPeakSampler load_heap((*server)->pid());
    for (int rep = 0; rep < 2; ++rep) {
      t0 = Clock::now();
      absl::Status st = (*client)->Load("bench/" + w.name, {}, &sink);
      t1 = Clock::now();
      if (!st.ok()) {
        std::fprintf(stderr, "load: %s\n", st.ToString().c_str());
        return 1;
      }
      best_load = std::max(best_load, data.total / Seconds(t0, t1) / 1e9);
    }
    const double load_heap_mib = load_heap.Stop();
    bool same = buffers == data.bytes;
    std::printf("  load        %6.2f GB/s  (into existing buffers, best of 2)%s\n", best_load,
                same ? "" : "  MISMATCH");
    std::printf(
        "  peak RSS    server %.0f MiB, client %.0f MiB (client holds %.0f MiB of data x2)\n",
        PeakRssMiB((*server)->pid()), PeakRssMiB(getpid()), data.total / 1048576.0);
    std::printf("  server heap +%.0f MiB during save, +%.0f MiB during loads\n", save_heap_mib,
                load_heap_mib);
    std::printf("  targets     save >= 80%% of disk: %s; incremental <= 15%% of full time: %s\n\n",
                save_gbps >= 0.8 * disk ? "met" : "NOT met",
                inc_s <= 0.15 * save_s ? "met" : "NOT met");
    if (!same) return 1;
    client->reset();
    (*server)->Terminate();
  }
  return 0;
}

}  // namespace
}  // namespace ckpt::bench

int main(int argc, char** argv) { return ckpt::bench::Run(argc, argv); }
