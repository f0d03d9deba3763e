// SPEC §8's workloads through the LibTorch client library, side by side in
// the same runs with the ceilings and baselines of the same bytes: an fsync'd
// write, a bare gRPC upload and download (bench_grpc), a single-thread memcpy,
// LibTorch torch::pickle_save (+fsync) / torch::pickle_load, and Python
// torch.save (+fsync) / torch.load (if a Python with torch is found). Prints
// medians and ranges over --runs, the ratios issue 12 sets targets for, and
// with --json every run's figures.
//
//   bench_torch [--scale F] [--workload gpt2|small|all] [--runs N] [--json FILE]
//               [--python PATH|COMMAND] [--server PATH]   (--help says more)
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
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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

// One run's figures, by name (GB/s, seconds, MiB or ratios).
using Figures = std::map<std::string, double>;

// One run of workload `w` with values from `seed`: its ceilings (fsync'd
// write, bare gRPC, memcpy, Python), then ckpt on a fresh server.
absl::StatusOr<Figures> RunOnce(const Workload& w, uint64_t seed, const std::string& dir,
                                const std::string& python, bool no_python,
                                const std::string& perf_dir) {
  Figures f;
  auto server = testing::ServerProcess::Start(absl::StrCat(dir, "/db-", w.name, "-", seed));
  if (!server.ok()) return server.status();
  auto client = client::Client::Connect((*server)->address(), {});
  if (!client.ok()) return client.status();
  torch::manual_seed(seed);
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
  f["bytes"] = total;

  // Ceilings of the same bytes, measured in this run.
  f["disk_write_gbps"] = DiskWriteGBps(dir, total);
  const BareGrpc grpc = BareGrpcGBps(total);
  f["grpc_upload_gbps"] = grpc.upload;
  f["grpc_download_gbps"] = grpc.download;
  double memcpy_s = 1e9;
  {
    std::vector<uint8_t> warm(total);
    std::memset(warm.data(), 1, warm.size());
    for (int r = 0; r < 3; ++r) {
      const auto t0 = Clock::now();
      uint64_t off = 0;
      for (const auto& e : sd) {
        const uint64_t n = e.value().numel() * e.value().element_size();
        std::memcpy(warm.data() + off, e.value().data_ptr(), n);
        off += n;
      }
      memcpy_s = std::min(memcpy_s, Since(t0));
    }
  }
  f["memcpy_s"] = memcpy_s;
  if (!no_python) {
    auto [py_save, py_load] = PythonBaseline(python, w, dir);
    if (py_save > 0) {
      f["torch_save_fsync_gbps"] = py_save;
      f["torch_load_gbps"] = py_load;
    }
  }

  // Memory each operation adds on top of the model (client) and on top of
  // the idle server: the peak resident set is reset before each. The
  // server's resident set also counts the pages of the chunk files it maps
  // (page cache, reclaimable); its heap is reported apart.
  const pid_t server_pid = (*server)->pid();
  double client_base = 0, server_base = 0;
  std::unique_ptr<AnonPeakSampler> server_heap;
  double client_cpu = 0, server_cpu = 0;
  // `perf record` of client and server into DIR/<workload>-<what>.data.
  auto record = [&](const std::string& what) -> std::unique_ptr<PerfRecord> {
    if (perf_dir.empty()) return nullptr;
    const std::string path = absl::StrCat(perf_dir, "/", w.name, "-", what, ".data");
    auto started = PerfRecord::Start({getpid(), server_pid}, path);
    if (!started) {
      std::fprintf(stderr,
                   "bench_torch: perf record did not start for %s (run as root, or lower "
                   "/proc/sys/kernel/perf_event_paranoid)\n",
                   path.c_str());
    }
    return started;
  };
  std::unique_ptr<PerfRecord> perf;
  auto start_peak = [&](const std::string& what) {
    perf = record(what);
    client_cpu = CpuSeconds(getpid());
    server_cpu = CpuSeconds(server_pid);
    client_base = RssMiB(getpid());
    server_base = RssMiB(server_pid);
    ResetPeakRss(getpid());
    ResetPeakRss(server_pid);
    server_heap = std::make_unique<AnonPeakSampler>(server_pid);
  };
  auto end_peak = [&](const std::string& what) {
    f[what + "_client_cpu_s"] = CpuSeconds(getpid()) - client_cpu;
    f[what + "_server_cpu_s"] = CpuSeconds(server_pid) - server_cpu;
    if (perf) perf->Stop();
    f[what + "_client_mib"] = std::max(0.0, PeakRssMiB(getpid()) - client_base);
    f[what + "_server_mib"] = std::max(0.0, PeakRssMiB(server_pid) - server_base);
    f[what + "_server_heap_mib"] = server_heap->Stop();
  };

  const std::string name = "bench/" + w.name;
  start_peak("save");
  auto t0 = Clock::now();
  auto full = (*client)->Save(name, sd, {});
  const double save_s = Since(t0);
  end_peak("save");
  if (!full.ok()) return full.status();
  f["save_gbps"] = total / save_s / 1e9;
  f["save_s"] = save_s;

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
  std::unique_ptr<PerfRecord> inc_perf = record("incremental");
  const double inc_client_cpu = CpuSeconds(getpid()), inc_server_cpu = CpuSeconds(server_pid);
  t0 = Clock::now();
  auto inc = (*client)->Save(name, sd, {});
  const double inc_s = Since(t0);
  f["incremental_client_cpu_s"] = CpuSeconds(getpid()) - inc_client_cpu;
  f["incremental_server_cpu_s"] = CpuSeconds(server_pid) - inc_server_cpu;
  inc_perf.reset();
  if (!inc.ok()) return inc.status();
  f["incremental_s"] = inc_s;
  f["incremental_of_full"] = inc_s / save_s;
  f["incremental_wire_mb"] = inc->bytes_sent / 1e6;
  f["incremental_changed_tensors"] = changed;
  f["incremental_changed_bytes_share"] = static_cast<double>(changed_bytes) / total;

  // Five async saves in a row, each waited for: the first snapshots into
  // fresh memory, the others into the buffer the client kept.
  std::vector<double> later;
  for (int i = 0; i < 5; ++i) {
    t0 = Clock::now();
    auto future = (*client)->SaveAsync(name + "-async", sd, {});
    const double stall = Since(t0);
    auto result = future.get();
    if (!result.ok()) return result.status();
    if (i == 0) {
      f["async_first_stall_s"] = stall;
      f["async_first_total_s"] = Since(t0);
    } else {
      later.push_back(stall);
    }
  }
  f["async_stall_s"] = Summarize(later).median;
  f["async_stall_of_memcpy"] = f["async_stall_s"] / memcpy_s;

  // Restore into the existing tensors, and as fresh tensors.
  start_peak("load");
  t0 = Clock::now();
  auto into = (*client)->LoadInto(name, sd, "", true, {});
  const double into_s = Since(t0);
  end_peak("load");
  if (!into.ok()) return into.status();
  f["load_into_gbps"] = total / into_s / 1e9;
  f["load_into_s"] = into_s;
  t0 = Clock::now();
  auto fresh = (*client)->Load(name, {});
  const double fresh_s = Since(t0);
  if (!fresh.ok()) return fresh.status();
  fresh = c10::IValue();  // free
  f["load_new_gbps"] = total / fresh_s / 1e9;

  // LibTorch pickle baselines.
  const std::string file = dir + "/pickle.pt";
  t0 = Clock::now();
  {
    std::vector<char> bytes = torch::pickle_save(c10::IValue(sd));
    int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (write(fd, bytes.data(), bytes.size()) < 0) return absl::InternalError("write failed");
    fsync(fd);
    close(fd);
  }
  f["pickle_save_gbps"] = total / Since(t0) / 1e9;
  t0 = Clock::now();
  {
    std::ifstream in(file, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    c10::IValue back = torch::pickle_load(bytes);
  }
  f["pickle_load_gbps"] = total / Since(t0) / 1e9;
  unlink(file.c_str());

  // The ratios the targets are about, per run (machines drift between runs).
  auto ratio = [&](const std::string& out, const std::string& a, const std::string& b) {
    if (f.count(a) && f.count(b) && f[b] > 0) f[out] = f[a] / f[b];
  };
  ratio("save_of_torch_save", "save_gbps", "torch_save_fsync_gbps");
  ratio("save_of_grpc_upload", "save_gbps", "grpc_upload_gbps");
  ratio("save_of_disk", "save_gbps", "disk_write_gbps");
  // A durable save writes every byte through the network and onto the
  // disk: neither ceiling alone bounds it, the slower does.
  ratio("disk_of_grpc_upload", "disk_write_gbps", "grpc_upload_gbps");
  if (f.count("disk_write_gbps") && f.count("grpc_upload_gbps")) {
    f["durable_ceiling_gbps"] = std::min(f["disk_write_gbps"], f["grpc_upload_gbps"]);
  }
  ratio("save_of_durable_ceiling", "save_gbps", "durable_ceiling_gbps");
  ratio("load_into_of_grpc_download", "load_into_gbps", "grpc_download_gbps");
  ratio("load_into_of_torch_load", "load_into_gbps", "torch_load_gbps");
  client->reset();
  (*server)->Terminate();
  return f;
}

// A figure's median and range over the runs, formatted.
std::string Cell(const std::vector<Figures>& runs, const std::string& key, const char* format) {
  std::vector<double> v;
  for (const auto& f : runs) {
    auto it = f.find(key);
    if (it != f.end()) v.push_back(it->second);
  }
  if (v.empty()) return "n/a";
  const Summary s = Summarize(v);
  if (v.size() == 1) return absl::StrFormat(format, s.median);
  return absl::StrCat(absl::StrFormat(format, s.median), " (", absl::StrFormat(format, s.min), "-",
                      absl::StrFormat(format, s.max), ")");
}

struct Target {
  std::string what, key;
  double bound;
  bool at_most;    // the figure must be <= bound (else >=)
  bool every_run;  // judged on the worst run, not the median
};

int Run(int argc, char** argv) {
  std::string python = "/usr/bin/python3";
  CLI::App app{
      "bench_torch: SPEC §8's workloads through the LibTorch client beside the ceilings "
      "(fsync'd write, bare gRPC upload/download, memcpy) and Python torch.save/torch.load, "
      "measured in the same runs (prints medians and ranges; about 1.5 GB of memory and disk "
      "at scale 1)"};
  WorkloadOptions workload_options;
  AddWorkloadOptions(app, &workload_options);
  app.add_option("--python", python,
                 "Python with torch for the baseline: a path or a command name looked up in PATH")
      ->capture_default_str();
  bool no_python = false;
  app.add_flag("--no-python", no_python, "skip the Python torch.save/torch.load baseline");
  int runs = 3;
  app.add_option("--runs", runs, "runs per workload (medians and ranges over them)")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  std::string json_path;
  app.add_option("--json", json_path, "also write every run's figures to this file as JSON");
  std::string perf_dir;
  app.add_option("--perf", perf_dir,
                 "first record a run's save, incremental save and load with `perf record` "
                 "(client and server; a run of its own, not in the figures) "
                 "into this directory, for bench/perf_phases.py")
      ->check(CLI::ExistingDirectory);
  CLI11_PARSE(app, argc, argv);
  const std::string python_path = FindProgram(python);
  if (python_path.empty() && app.count("--python") > 0) {
    std::fprintf(stderr, "bench_torch: --python %s: no such program (path or command in PATH)\n",
                 python.c_str());
    return 2;
  }
  if (!python_path.empty()) python = python_path;
  if (!perf_dir.empty() && FindProgram("perf").empty()) {
    std::fprintf(stderr, "bench_torch: --perf needs perf (Debian package linux-perf)\n");
    return 2;
  }
  testing::TempDir dir;
  std::printf(
      "ckpt LibTorch client benchmark, scale %.3g, %d run(s) per workload: median "
      "(min-max)\n\n",
      workload_options.scale, runs);
  const std::vector<Workload> workloads = SelectWorkloads(workload_options);

  const std::vector<Target> targets = {
      {"save >= 1.0x torch.save+fsync", "save_of_torch_save", 1.0, false, false},
      {"save >= 0.6x bare gRPC upload", "save_of_grpc_upload", 0.6, false, false},
      {"load into >= 0.8x bare gRPC download", "load_into_of_grpc_download", 0.8, false, false},
      {"load into >= 1.0x torch.load, every run", "load_into_of_torch_load", 1.0, false, true},
      {"incremental <= 15% of the full save", "incremental_of_full", 0.15, true, false},
      {"async stall <= 1.5x memcpy (2nd-5th)", "async_stall_of_memcpy", 1.5, true, false},
      {"client memory <= model + 64 MiB (save)", "save_client_mib", 64, true, true},
      {"client memory <= model + 64 MiB (load)", "load_client_mib", 64, true, true},
  };
  nlohmann::json report = {{"benchmark", "bench_torch"},
                           {"scale", workload_options.scale},
                           {"runs", runs},
                           {"python", no_python ? "" : python},
                           {"workloads", nlohmann::json::array()}};
  for (const Workload& w : workloads) {
    if (!perf_dir.empty()) {
      // Profiled in a run of its own: perf's sampling would weigh on the
      // figures.
      auto profiled = RunOnce(w, 1000, dir.path(), python, /*no_python=*/true, perf_dir);
      if (!profiled.ok()) {
        std::fprintf(stderr, "bench_torch: %s profiled run: %s\n", w.name.c_str(),
                     profiled.status().ToString().c_str());
        return 1;
      }
    }
    std::vector<Figures> figures;
    for (int r = 0; r < runs; ++r) {
      auto f = RunOnce(w, r, dir.path(), python, no_python, "");
      if (!f.ok()) {
        std::fprintf(stderr, "bench_torch: %s run %d: %s\n", w.name.c_str(), r + 1,
                     f.status().ToString().c_str());
        return 1;
      }
      figures.push_back(*std::move(f));
    }
    const double total = figures[0]["bytes"];
    std::printf("== %s: %zu tensors, %.1f MB\n", w.name.c_str(), w.shapes.size(), total / 1e6);
    auto row = [&](const char* label, const std::string& cell) {
      std::printf("  %-42s %s\n", label, cell.c_str());
    };
    std::printf(" ceilings and baselines (same bytes, same runs)\n");
    row("fsync'd write, GB/s", Cell(figures, "disk_write_gbps", "%.2f"));
    row("bare gRPC upload, GB/s", Cell(figures, "grpc_upload_gbps", "%.2f"));
    row("bare gRPC download, GB/s", Cell(figures, "grpc_download_gbps", "%.2f"));
    row("memcpy into warm memory (1 thread), s", Cell(figures, "memcpy_s", "%.3f"));
    row("Python torch.save+fsync, GB/s", Cell(figures, "torch_save_fsync_gbps", "%.2f"));
    row("Python torch.load, GB/s", Cell(figures, "torch_load_gbps", "%.2f"));
    row("LibTorch pickle_save+fsync, GB/s", Cell(figures, "pickle_save_gbps", "%.2f"));
    row("LibTorch pickle_load, GB/s", Cell(figures, "pickle_load_gbps", "%.2f"));
    std::printf(" ckpt\n");
    row("save, GB/s", Cell(figures, "save_gbps", "%.2f"));
    row("  x torch.save+fsync", Cell(figures, "save_of_torch_save", "%.2f"));
    row("  x bare gRPC upload", Cell(figures, "save_of_grpc_upload", "%.2f"));
    row("  x fsync'd write", Cell(figures, "save_of_disk", "%.2f"));
    row("  x durable ceiling (slower of the two)",
        Cell(figures, "save_of_durable_ceiling", "%.2f"));
    row("  (ceiling: fsync'd write / bare upload)", Cell(figures, "disk_of_grpc_upload", "%.2f"));
    row("incremental save (10% changed), s", Cell(figures, "incremental_s", "%.3f"));
    row("  share of the full save's time", Cell(figures, "incremental_of_full", "%.2f"));
    row("  CPU: client, s", Cell(figures, "incremental_client_cpu_s", "%.3f"));
    row("  CPU: server, s", Cell(figures, "incremental_server_cpu_s", "%.3f"));
    std::printf("  %-42s %.0f of %zu tensors, %.1f%% of bytes; %s MB on the wire\n", "  changed",
                figures[0]["incremental_changed_tensors"], w.shapes.size(),
                100 * figures[0]["incremental_changed_bytes_share"],
                Cell(figures, "incremental_wire_mb", "%.1f").c_str());
    row("async save: first stall, s", Cell(figures, "async_first_stall_s", "%.3f"));
    row("async save: later stalls (median of 4), s", Cell(figures, "async_stall_s", "%.3f"));
    row("  x memcpy", Cell(figures, "async_stall_of_memcpy", "%.2f"));
    row("load into existing tensors, GB/s", Cell(figures, "load_into_gbps", "%.2f"));
    row("  x bare gRPC download", Cell(figures, "load_into_of_grpc_download", "%.2f"));
    row("  x torch.load", Cell(figures, "load_into_of_torch_load", "%.2f"));
    row("load as new tensors, GB/s", Cell(figures, "load_new_gbps", "%.2f"));
    row("CPU during save: client, s", Cell(figures, "save_client_cpu_s", "%.2f"));
    row("  server, s (save's wall time)", absl::StrCat(Cell(figures, "save_server_cpu_s", "%.2f"),
                                                       " (", Cell(figures, "save_s", "%.2f"), ")"));
    row("CPU during load into: client, s", Cell(figures, "load_client_cpu_s", "%.2f"));
    row("  server, s (load's wall time)",
        absl::StrCat(Cell(figures, "load_server_cpu_s", "%.2f"), " (",
                     Cell(figures, "load_into_s", "%.2f"), ")"));
    row("memory added by save: client, MiB", Cell(figures, "save_client_mib", "%.0f"));
    row("  server (heap), MiB", Cell(figures, "save_server_heap_mib", "%.0f"));
    row("memory added by load into: client, MiB", Cell(figures, "load_client_mib", "%.0f"));
    row("  server (heap), MiB", Cell(figures, "load_server_heap_mib", "%.0f"));
    std::printf(" targets (issue 12)\n");
    nlohmann::json judged = nlohmann::json::array();
    for (const Target& t : targets) {
      std::vector<double> v;
      for (const auto& f : figures) {
        if (f.count(t.key)) v.push_back(f.at(t.key));
      }
      if (v.empty()) {
        row(t.what.c_str(), "not measured");
        continue;
      }
      const Summary s = Summarize(v);
      const double judged_value = t.every_run ? (t.at_most ? s.max : s.min) : s.median;
      const bool met = t.at_most ? judged_value <= t.bound : judged_value >= t.bound;
      row(t.what.c_str(), absl::StrFormat("%.2f: %s", judged_value, met ? "met" : "NOT met"));
      judged.push_back(
          {{"target", t.what}, {"figure", t.key}, {"value", judged_value}, {"met", met}});
    }
    std::printf("\n");
    nlohmann::json per_run = nlohmann::json::array();
    for (const auto& f : figures) per_run.push_back(f);
    report["workloads"].push_back({{"name", w.name},
                                   {"tensors", w.shapes.size()},
                                   {"bytes", total},
                                   {"runs", per_run},
                                   {"targets", judged}});
  }
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << report.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "bench_torch: cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace ckpt::bench

int main(int argc, char** argv) { return ckpt::bench::Run(argc, argv); }
