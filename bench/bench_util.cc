#include "bench/bench_util.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/testing/server_process.h"

namespace ckpt::bench {

std::string FindProgram(const std::string& program) {
  if (program.empty()) return "";
  if (program.find('/') != std::string::npos) {
    return access(program.c_str(), X_OK) == 0 ? program : "";
  }
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path != nullptr ? path : "", ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", program);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

Shapes Gpt2Adam(double scale) {
  auto dim = [&](int64_t d) { return std::max<int64_t>(1, static_cast<int64_t>(d * scale)); };
  Shapes params = {{"wte.weight", {dim(50257), 768}}, {"wpe.weight", {dim(1024), 768}}};
  for (int l = 0; l < 12; ++l) {
    const std::string p = absl::StrCat("h.", l, ".");
    const Shapes layer = {{"ln_1.weight", {768}},
                          {"ln_1.bias", {768}},
                          {"attn.c_attn.weight", {dim(768), 2304}},
                          {"attn.c_attn.bias", {2304}},
                          {"attn.c_proj.weight", {dim(768), 768}},
                          {"attn.c_proj.bias", {768}},
                          {"ln_2.weight", {768}},
                          {"ln_2.bias", {768}},
                          {"mlp.c_fc.weight", {dim(768), 3072}},
                          {"mlp.c_fc.bias", {3072}},
                          {"mlp.c_proj.weight", {dim(3072), 768}},
                          {"mlp.c_proj.bias", {768}}};
    for (const auto& [name, shape] : layer) params.push_back({p + name, shape});
  }
  params.push_back({"ln_f.weight", {768}});
  params.push_back({"ln_f.bias", {768}});
  Shapes out;
  for (const auto& p : params) out.push_back({"model/" + p.first, p.second});
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string s = absl::StrCat("optim/state/", i, "/");
    out.push_back({s + "exp_avg", params[i].second});
    out.push_back({s + "exp_avg_sq", params[i].second});
    out.push_back({s + "step", {}});
  }
  return out;
}

Shapes ManySmall(double scale) {
  Shapes out;
  const int n = std::max(1, static_cast<int>(20000 * scale));
  for (int i = 0; i < n; ++i) out.push_back({absl::StrCat("t", i), {3875}});
  return out;
}

double PeakRssMiB(pid_t pid) { return testing::ProcStatusMiB(pid, "VmHWM:"); }

double RssMiB(pid_t pid) { return testing::ProcStatusMiB(pid, "VmRSS:"); }

double RssAnonMiB(pid_t pid) { return testing::ProcStatusMiB(pid, "RssAnon:"); }

AnonPeakSampler::AnonPeakSampler(pid_t pid)
    : pid_(pid), base_(RssAnonMiB(pid)), peak_(base_), thread_([this] {
        while (!stop_.load()) {
          peak_ = std::max(peak_, RssAnonMiB(pid_));
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }) {}

AnonPeakSampler::~AnonPeakSampler() { Stop(); }

double AnonPeakSampler::Stop() {
  if (thread_.joinable()) {
    stop_.store(true);
    thread_.join();
    peak_ = std::max(peak_, RssAnonMiB(pid_));
  }
  return peak_ - base_;
}

bool ResetPeakRss(pid_t pid) {
  std::ofstream out(absl::StrCat("/proc/", pid, "/clear_refs"));
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

double DiskWriteGBps(const std::string& dir, uint64_t bytes) {
  const std::string path = dir + "/disk-probe";
  std::string block(4 << 20, 'x');
  std::mt19937_64 rng(1);
  for (size_t i = 0; i + 8 <= block.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&block[i], &v, 8);
  }
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t done = 0; done < bytes; done += block.size()) {
    if (write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size())) break;
  }
  fsync(fd);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  close(fd);
  unlink(path.c_str());
  return bytes / secs / 1e9;
}

Child SpawnSelf(const std::vector<std::string>& args) {
  // Close-on-exec: a child must not hold another's pipe ends (its EOF would
  // never come); dup2 onto 0 and 1 clears the flag for the child's own.
  int to[2], from[2];
  if (pipe2(to, O_CLOEXEC) != 0) return {};
  if (pipe2(from, O_CLOEXEC) != 0) {
    close(to[0]);
    close(to[1]);
    return {};
  }
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // posix_spawn, not fork: see testing::RunCommand.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, to[0], 0);
  posix_spawn_file_actions_adddup2(&actions, from[1], 1);
  pid_t pid = -1;
  const int spawned = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(to[0]);
  close(from[1]);
  if (spawned != 0) {
    close(to[1]);
    close(from[0]);
    return {};
  }
  return {pid, fdopen(to[1], "w"), fdopen(from[0], "r")};
}

double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Fields after the command name (which may hold spaces): state is the
  // 3rd field, utime and stime the 14th and 15th.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ');
  if (fields.size() < 13) return 0;
  return (std::stod(fields[11]) + std::stod(fields[12])) / sysconf(_SC_CLK_TCK);
}

std::unique_ptr<PerfRecord> PerfRecord::Start(const std::vector<pid_t>& pids,
                                              const std::string& path) {
  const std::string perf = FindProgram("perf");
  if (perf.empty() || pids.empty()) return nullptr;
  std::string list;
  for (pid_t p : pids) absl::StrAppend(&list, list.empty() ? "" : ",", p);
  // cpu-clock: periods in nanoseconds on any machine (perf_phases.py sums
  // them as CPU time).
  std::vector<std::string> args = {perf,   "record", "-q", "-e", "cpu-clock", "-F",
                                   "1999", "-p",     list, "-o", path};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // posix_spawn, not fork: see testing::RunCommand.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) return nullptr;
  // perf attaches to running processes within a few milliseconds; give it
  // ample time so that the operation's start is in the profile.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  int status = 0;
  if (waitpid(pid, &status, WNOHANG) == pid) return nullptr;  // it gave up
  return std::unique_ptr<PerfRecord>(new PerfRecord(pid));
}

PerfRecord::~PerfRecord() { Stop(); }

void PerfRecord::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGINT);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

BareGrpc BareGrpcGBps(uint64_t bytes) {
  char self[4096] = {};
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return {};
  std::string dir(self, n);
  dir = dir.substr(0, dir.rfind('/'));
  const std::string binary = FindProgram(dir + "/bench_grpc");
  if (binary.empty()) return {};
  auto run = testing::RunCommand({binary, "--bytes", std::to_string(bytes)});
  BareGrpc out;
  if (run.exit_code != 0 ||
      std::sscanf(run.out.c_str(), "%lf %lf", &out.upload, &out.download) != 2) {
    return {};
  }
  return out;
}

Summary Summarize(std::vector<double> values) {
  if (values.empty()) return {};
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  const double median = n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  return {median, values.front(), values.back()};
}

void AddWorkloadOptions(CLI::App& app, WorkloadOptions* options) {
  app.add_option("--scale", options->scale, "workload size factor (1: GPT-2 small + Adam, ~1.5 GB)")
      ->check(CLI::Range(0.001, 100.0))
      ->capture_default_str();
  app.add_option("--workload", options->workload, "gpt2, small or all")
      ->check(CLI::IsMember({"gpt2", "small", "all"}))
      ->capture_default_str();
  app.add_option("--server", options->server_bin,
                 "ckpt-server binary (default: the one built with it)")
      ->check(CLI::ExistingFile);
}

std::vector<Workload> SelectWorkloads(const WorkloadOptions& options) {
  if (!options.server_bin.empty()) setenv("CKPT_SERVER_BIN", options.server_bin.c_str(), 1);
  std::vector<Workload> workloads;
  if (options.workload == "all" || options.workload == "gpt2") {
    workloads.push_back({"gpt2-small-adam", Gpt2Adam(options.scale)});
  }
  if (options.workload == "all" || options.workload == "small") {
    workloads.push_back({"20k-small", ManySmall(options.scale)});
  }
  return workloads;
}

Data Materialize(const Workload& w, uint64_t seed) {
  Data d;
  Node root;
  root.kind = NodeKind::kDict;
  root.size = static_cast<uint32_t>(w.shapes.size());
  d.input.tree.push_back(root);
  d.bytes.emplace_back();
  std::mt19937_64 rng(seed);
  for (const auto& [key, shape] : w.shapes) {
    Node n;
    n.kind = NodeKind::kTensor;
    n.key = key;
    n.tensor.dtype = DType::kFloat32;
    n.tensor.shape = shape;
    n.data.size = *n.tensor.NumBytes();
    // Distinct finite floats in [1, 2) (random mantissas): incompressible
    // like trained weights, and statistics take their common path.
    std::string b(n.data.size, '\0');
    for (size_t i = 0; i + 8 <= b.size(); i += 8) {
      const uint64_t v = rng();
      const uint32_t halves[2] = {static_cast<uint32_t>(v >> 41) | 0x3f800000u,
                                  static_cast<uint32_t>((v >> 9) & 0x7fffffu) | 0x3f800000u};
      std::memcpy(&b[i], halves, 8);
    }
    d.total += b.size();
    d.tensor_nodes.push_back(d.input.tree.size());
    d.input.tree.push_back(std::move(n));
    d.bytes.push_back(std::move(b));
  }
  for (const auto& b : d.bytes) {
    d.input.bytes.emplace_back(reinterpret_cast<const uint8_t*>(b.data()), b.size());
  }
  return d;
}

}  // namespace ckpt::bench
