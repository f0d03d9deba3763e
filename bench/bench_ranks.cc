// Many ranks at once: GPT-2+Adam (SPEC §8) saved by one writer process, then
// by N writer processes each sending 1/N of the tensors as the parts of one
// version; loaded back by one reader, then by N readers each taking its own
// part. Every process prepares its bytes first and starts on the same signal;
// aggregate GB/s is all bytes over the time from that signal to the last
// process done. Loads are checked byte for byte (after the clock stops).
//
//   bench_ranks [--scale F] [--ranks N] [--runs R] [--server PATH]
//   bench_ranks worker ...   (what it starts as its writers and readers)

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "client/raw_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Part p of n: GPT-2's tensors dealt round, largest first (as many tensors
// in each part, bytes within a tensor or so).
Shapes Part(const Shapes& all, int p, int n) {
  std::vector<size_t> order(all.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto bytes = [&](size_t i) {
    int64_t b = 4;
    for (int64_t d : all[i].second) b *= d;
    return b;
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return bytes(a) > bytes(b); });
  std::vector<int> owner(all.size());
  for (size_t i = 0; i < order.size(); ++i) owner[order[i]] = static_cast<int>(i % n);
  Shapes out;
  for (size_t i = 0; i < all.size(); ++i) {
    if (owner[i] == p) out.push_back(all[i]);
  }
  return out;
}

// The bytes of parts `parts` of n (part p's values from seed*1000+p) as one
// dict.
std::string PartPrefix(int part) { return absl::StrCat("part", part, "/"); }

Data PartsData(const Shapes& all, const std::vector<int>& parts, int n, uint64_t seed) {
  Data out;
  Node root;
  root.kind = NodeKind::kDict;
  out.input.tree.push_back(root);
  out.bytes.emplace_back();
  for (int p : parts) {
    Data d = Materialize({"part", Part(all, p, n)}, seed * 1000 + p);
    for (size_t i = 1; i < d.input.tree.size(); ++i) {
      // "part3/<key>": a reader selects each of its parts with one pattern.
      d.input.tree[i].key = PartPrefix(p) + std::get<std::string>(d.input.tree[i].key);
      out.input.tree.push_back(std::move(d.input.tree[i]));
      out.bytes.push_back(std::move(d.bytes[i]));
    }
    out.total += d.total;
  }
  out.input.tree[0].size = static_cast<uint32_t>(out.input.tree.size() - 1);
  for (const auto& b : out.bytes) {
    out.input.bytes.emplace_back(reinterpret_cast<const uint8_t*>(b.data()), b.size());
  }
  return out;
}

// Restores into buffers of the same keys.
class IntoKeys : public client::LoadSink {
 public:
  explicit IntoKeys(const Data& like) {
    for (size_t i = 1; i < like.input.tree.size(); ++i) {
      index_[std::get<std::string>(like.input.tree[i].key)] = i;
      buffers_.emplace_back(like.bytes[i].size(), '\0');
    }
  }
  absl::Status OnTree(const VersionInfo&, const Tree& tree) override {
    node_to_buffer_.assign(tree.size(), -1);
    for (size_t i = 0; i < tree.size(); ++i) {
      if (tree[i].kind != NodeKind::kTensor) continue;
      const auto* key = std::get_if<std::string>(&tree[i].key);
      auto it = key ? index_.find(*key) : index_.end();
      if (it == index_.end()) return absl::InternalError("unexpected tensor in the load");
      node_to_buffer_[i] = static_cast<int>(it->second - 1);
    }
    return absl::OkStatus();
  }
  absl::Status OnData(size_t node, uint64_t offset, absl::string_view bytes) override {
    std::string& b = buffers_[node_to_buffer_[node]];
    if (offset + bytes.size() > b.size()) return absl::InternalError("piece past the end");
    std::memcpy(b.data() + offset, bytes.data(), bytes.size());
    return absl::OkStatus();
  }
  bool Equals(const Data& like) const {
    for (size_t i = 1; i < like.bytes.size(); ++i) {
      if (buffers_[i - 1] != like.bytes[i]) return false;
    }
    return true;
  }

 private:
  std::map<std::string, size_t> index_;
  std::vector<std::string> buffers_;
  std::vector<int> node_to_buffer_;
};

struct WorkerArgs {
  std::string address, name, op = "save", save_id;
  double scale = 1;
  int parts = 1, rank = 0, world = 1;
  uint64_t seed = 0;
};

// Prepares, says "ready", waits for a line on stdin, runs, says "done", then
// checks a load and says "ok" (or why not).
int Worker(const WorkerArgs& a) {
  const Shapes all = Gpt2Adam(a.scale);
  // A writer of world W sends part `rank`; a reader reads the parts it is
  // given (all of them for a single reader).
  std::vector<int> parts;
  for (int p = a.rank; p < a.parts; p += a.world) parts.push_back(p);
  const Data data = PartsData(all, parts, a.parts, a.seed);
  auto client = client::RawClient::Connect(a.address, {});
  if (!client.ok()) {
    std::printf("error %s\n", client.status().ToString().c_str());
    return 1;
  }
  IntoKeys sink(data);
  std::printf("ready\n");
  std::fflush(stdout);
  char go[8];
  if (!std::fgets(go, sizeof go, stdin)) return 1;
  const double cpu_at_go = CpuSeconds(getpid());
  absl::Status status;
  if (a.op == "save") {
    client::SaveOptions options;
    options.rank = a.rank;
    options.world_size = a.world;
    options.save_id = a.save_id;
    options.timeout = absl::Minutes(10);
    status = (*client)->Save(a.name, data.input, options).status();
  } else {
    client::LoadOptions options;
    if (a.world > 1) {
      for (int p : parts) options.patterns.push_back(PartPrefix(p) + "*");
    }
    status = (*client)->Load(a.name, options, &sink);
  }
  const double cpu = CpuSeconds(getpid()) - cpu_at_go;
  std::printf("done %s\n", status.ok() ? "" : status.ToString().c_str());
  std::fflush(stdout);
  if (!status.ok()) return 1;
  if (a.op == "load" && !sink.Equals(data)) {
    std::printf("mismatch\n");
    return 1;
  }
  std::printf("ok %llu %.3f\n", static_cast<unsigned long long>(data.total), cpu);
  return 0;
}

std::string ReadLine(FILE* f) {
  char line[1024];
  if (!std::fgets(line, sizeof line, f)) return "";
  std::string s(line);
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// Runs `world` workers of one operation; returns aggregate GB/s (0 on
// failure) and the server heap it added.
struct Outcome {
  double gbps = 0, seconds = 0, server_heap_mib = 0;
  double server_cpu = 0, workers_cpu = 0;  // seconds, from "go" to "done"
};
Outcome RunWorkers(const WorkerArgs& base, int world, pid_t server_pid) {
  std::vector<Child> children;
  for (int r = 0; r < world; ++r) {
    children.push_back(SpawnSelf({"bench_ranks", "worker",
                                  "--address",   base.address,
                                  "--name",      base.name,
                                  "--op",        base.op,
                                  "--save-id",   base.save_id,
                                  "--scale",     absl::StrCat(base.scale),
                                  "--parts",     absl::StrCat(base.parts),
                                  "--rank",      absl::StrCat(r),
                                  "--world",     absl::StrCat(world),
                                  "--seed",      absl::StrCat(base.seed)}));
  }
  bool failed = false;
  for (auto& c : children) {
    const std::string line = c.out ? ReadLine(c.out) : "";
    if (line != "ready") {
      std::fprintf(stderr, "bench_ranks: a worker did not start: %s\n", line.c_str());
      failed = true;
    }
  }
  Outcome outcome;
  AnonPeakSampler heap(server_pid);
  const double server_cpu_at_go = CpuSeconds(server_pid);
  const auto t0 = Clock::now();
  for (auto& c : children) {
    if (c.in) {
      std::fputs("go\n", c.in);
      std::fflush(c.in);
    }
  }
  for (auto& c : children) {
    const std::string line = c.out ? ReadLine(c.out) : "";
    if (line != "done ") {
      std::fprintf(stderr, "bench_ranks: %s: %s\n", base.op.c_str(), line.c_str());
      failed = true;
    }
  }
  outcome.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  outcome.server_cpu = CpuSeconds(server_pid) - server_cpu_at_go;
  outcome.server_heap_mib = heap.Stop();
  uint64_t total = 0;
  for (auto& c : children) {
    const std::string line = c.out ? ReadLine(c.out) : "";
    if (line.rfind("ok ", 0) == 0) {
      size_t end = 0;
      total += std::stoull(line.substr(3), &end);
      outcome.workers_cpu += std::stod(line.substr(3 + end));
    } else {
      std::fprintf(stderr, "bench_ranks: %s check: %s\n", base.op.c_str(), line.c_str());
      failed = true;
    }
    if (c.in) std::fclose(c.in);
    if (c.out) std::fclose(c.out);
    int status = 0;
    if (c.pid > 0) waitpid(c.pid, &status, 0);
  }
  if (!failed) outcome.gbps = total / outcome.seconds / 1e9;
  return outcome;
}

int Run(int argc, char** argv) {
  CLI::App app{
      "bench_ranks: GPT-2+Adam saved by 1 writer process and by N writers as parts of one "
      "version, loaded by 1 reader and by N readers of their parts (aggregate GB/s, "
      "server heap; prints numbers)"};
  WorkloadOptions options;
  options.workload = "gpt2";
  AddWorkloadOptions(app, &options);
  int ranks = 8, runs = 3;
  app.add_option("--ranks", ranks, "processes at once")
      ->check(CLI::Range(2, 64))
      ->capture_default_str();
  app.add_option("--runs", runs, "runs (medians and ranges)")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  WorkerArgs worker;
  auto* sub = app.add_subcommand("worker", "one writer or reader (started by bench_ranks)");
  sub->group("");
  sub->add_option("--address", worker.address);
  sub->add_option("--name", worker.name);
  sub->add_option("--op", worker.op);
  sub->add_option("--save-id", worker.save_id);
  sub->add_option("--scale", worker.scale);
  sub->add_option("--parts", worker.parts);
  sub->add_option("--rank", worker.rank);
  sub->add_option("--world", worker.world);
  sub->add_option("--seed", worker.seed);
  CLI11_PARSE(app, argc, argv);
  if (sub->parsed()) return Worker(worker);
  SelectWorkloads(options);  // points the harness at --server

  testing::TempDir dir;
  std::printf(
      "ckpt many-ranks benchmark: GPT-2+Adam, scale %.3g, %d processes, %d run(s): "
      "median (min-max)\n\n",
      options.scale, ranks, runs);
  std::map<std::string, std::vector<double>> figures;
  for (int run = 0; run < runs; ++run) {
    auto server = testing::ServerProcess::Start(absl::StrCat(dir.path(), "/db", run));
    if (!server.ok()) {
      std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
      return 1;
    }
    WorkerArgs a;
    a.address = (*server)->address();
    a.scale = options.scale;
    a.parts = ranks;
    // One writer: every part, its own values (no dedup against the others).
    a.op = "save";
    a.name = "bench/one-writer";
    a.seed = run * 2 + 1;
    const Outcome one_save = RunWorkers(a, 1, (*server)->pid());
    // N writers: one version, part r from rank r.
    a.name = "bench/n-writers";
    a.seed = run * 2 + 2;
    a.save_id = absl::StrCat("run-", run);
    const Outcome n_save = RunWorkers(a, ranks, (*server)->pid());
    a.op = "load";
    const Outcome one_load = RunWorkers(a, 1, (*server)->pid());
    const Outcome n_load = RunWorkers(a, ranks, (*server)->pid());
    (*server)->Terminate();
    if (one_save.gbps == 0 || n_save.gbps == 0 || one_load.gbps == 0 || n_load.gbps == 0) {
      return 1;
    }
    figures["one_save"].push_back(one_save.gbps);
    figures["n_save"].push_back(n_save.gbps);
    figures["save_ratio"].push_back(n_save.gbps / one_save.gbps);
    figures["one_load"].push_back(one_load.gbps);
    figures["n_load"].push_back(n_load.gbps);
    figures["load_ratio"].push_back(n_load.gbps / one_load.gbps);
    for (const auto& [key, o] : {std::pair{"one_save", &one_save}, std::pair{"n_save", &n_save},
                                 std::pair{"one_load", &one_load}, std::pair{"n_load", &n_load}}) {
      figures[absl::StrCat(key, "_server_cpu")].push_back(o->server_cpu);
      figures[absl::StrCat(key, "_workers_cpu")].push_back(o->workers_cpu);
    }
    figures["save_heap"].push_back(n_save.server_heap_mib);
    figures["load_heap"].push_back(n_load.server_heap_mib);
  }
  auto cell = [&](const char* label, const std::string& key, const char* unit) {
    const Summary s = Summarize(figures[key]);
    std::printf("  %-36s %.2f (%.2f-%.2f)%s\n", label, s.median, s.min, s.max, unit);
  };
  cell("save, 1 writer", "one_save", " GB/s");
  cell(absl::StrCat("save, ", ranks, " writers (one version)").c_str(), "n_save", " GB/s");
  cell("  aggregate x 1 writer", "save_ratio", "");
  cell("load, 1 reader", "one_load", " GB/s");
  cell(absl::StrCat("load, ", ranks, " readers (own parts)").c_str(), "n_load", " GB/s");
  cell("  aggregate x 1 reader", "load_ratio", "");
  const std::string n = absl::StrCat(ranks);
  cell("CPU, 1 writer: server", "one_save_server_cpu", " s");
  cell("               writer", "one_save_workers_cpu", " s");
  cell(absl::StrCat("CPU, ", n, " writers: server").c_str(), "n_save_server_cpu", " s");
  cell("               writers (sum)", "n_save_workers_cpu", " s");
  cell("CPU, 1 reader: server", "one_load_server_cpu", " s");
  cell("               reader", "one_load_workers_cpu", " s");
  cell(absl::StrCat("CPU, ", n, " readers: server").c_str(), "n_load_server_cpu", " s");
  cell("               readers (sum)", "n_load_workers_cpu", " s");
  cell("server heap added, N writers", "save_heap", " MiB");
  cell("server heap added, N readers", "load_heap", " MiB");
  const double save_ratio = Summarize(figures["save_ratio"]).median;
  const double load_ratio = Summarize(figures["load_ratio"]).median;
  std::printf("  targets: N writers >= 1.0x one: %s; N readers >= 1.0x one: %s\n",
              save_ratio >= 1.0 ? "met" : "NOT met", load_ratio >= 1.0 ? "met" : "NOT met");
  return 0;
}

}  // namespace
}  // namespace ckpt::bench

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  return ckpt::bench::Run(argc, argv);
}
