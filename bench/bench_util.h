#ifndef CKPT_BENCH_BENCH_UTIL_H_
#define CKPT_BENCH_BENCH_UTIL_H_

// Shared by the benchmarks: SPEC §8's workload shapes and machine limits.

#include <sys/types.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "client/raw_client.h"

namespace ckpt::bench {

/// Where `program` runs from: itself if it names a path (has a '/'),
/// otherwise the first executable of that name in $PATH, like a shell.
/// Empty if there is none.
std::string FindProgram(const std::string& program);

/// Named float32 tensor shapes.
using Shapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

/// GPT-2 small (124M parameters) with Adam's exp_avg, exp_avg_sq and step:
/// 592 tensors, ~1.5 GB at scale 1 (large dimensions scaled by `scale`).
Shapes Gpt2Adam(double scale);

/// 20,000 tensors of 3,875 floats (~310 MB) at scale 1.
Shapes ManySmall(double scale);

/// A named workload of float32 tensors.
struct Workload {
  std::string name;
  Shapes shapes;
};

/// What every benchmark is told: how big, which workloads, which server.
struct WorkloadOptions {
  double scale = 1.0;
  std::string workload = "all";  ///< gpt2, small or all
  std::string server_bin;        ///< empty: the ckpt-server built with it
};

/// Adds --scale, --workload and --server to `app`, writing into `options`
/// (which must outlive the parse).
void AddWorkloadOptions(CLI::App& app, WorkloadOptions* options);

/// The workloads `options` select ("gpt2-small-adam", "20k-small"), and
/// points the test harness at options.server_bin when it is set.
std::vector<Workload> SelectWorkloads(const WorkloadOptions& options);

/// A workload's tensors made real: random finite float32 values in [1, 2)
/// (incompressible, like trained weights), one string per tree node (empty
/// for the root), and the SaveInput pointing at them.
struct Data {
  client::SaveInput input;
  std::vector<std::string> bytes;  ///< per node
  uint64_t total = 0;
  std::vector<size_t> tensor_nodes;
};

/// `w`'s tensors with values from `seed`.
Data Materialize(const Workload& w, uint64_t seed);

/// Peak resident set (VmHWM) of a process, in MiB.
double PeakRssMiB(pid_t pid);

/// Current resident set (VmRSS) of a process, in MiB.
double RssMiB(pid_t pid);

/// Anonymous (heap, not file-backed) resident memory (RssAnon), in MiB.
double RssAnonMiB(pid_t pid);

/// Samples a process's anonymous resident memory every 5 ms on a thread
/// until Stop(), which returns the peak above the value at construction.
class AnonPeakSampler {
 public:
  explicit AnonPeakSampler(pid_t pid);
  ~AnonPeakSampler();
  double Stop();

 private:
  pid_t pid_;
  double base_;
  std::atomic<bool> stop_{false};
  double peak_;
  std::thread thread_;
};

/// Resets a process's peak resident set to its current one (Linux
/// /proc/PID/clear_refs), so that PeakRssMiB then measures one operation.
/// False where the kernel refuses.
bool ResetPeakRss(pid_t pid);

/// The transport's ceiling: GB/s of a bare gRPC upload and download of
/// `bytes` between two processes (bench_grpc, found next to this program).
struct BareGrpc {
  double upload = 0, download = 0;
};
/// {0, 0} where bench_grpc is missing or fails.
BareGrpc BareGrpcGBps(uint64_t bytes);

/// A copy of this program (/proc/self/exe) started with `args` (args[0]
/// its name), its stdin and stdout pipes to us; pid -1 (and null streams)
/// if it could not be started. Closing `in` is its signal to end.
struct Child {
  pid_t pid = -1;
  FILE* in = nullptr;   // its stdin
  FILE* out = nullptr;  // its stdout
};
Child SpawnSelf(const std::vector<std::string>& args);

/// Median and range of one figure over a benchmark's runs.
struct Summary {
  double median = 0, min = 0, max = 0;
};
Summary Summarize(std::vector<double> values);

/// CPU time (user + system) a process has used so far, in seconds.
double CpuSeconds(pid_t pid);

/// `perf record` (Debian's linux-perf) sampling some processes, user and
/// kernel code, until Stop() or destruction; for bench/perf_phases.py.
class PerfRecord {
 public:
  /// Starts recording `pids` into `path`; null where perf cannot be run.
  static std::unique_ptr<PerfRecord> Start(const std::vector<pid_t>& pids, const std::string& path);
  ~PerfRecord();
  /// Stops recording and waits until the file is written.
  void Stop();

 private:
  explicit PerfRecord(pid_t pid) : pid_(pid) {}
  pid_t pid_;
};

/// The disk's fsync'd sequential write speed in GB/s: `bytes` written in
/// 4 MiB blocks to a file in `dir`, then fsync.
double DiskWriteGBps(const std::string& dir, uint64_t bytes = 1ull << 30);

}  // namespace ckpt::bench

#endif  // CKPT_BENCH_BENCH_UTIL_H_
