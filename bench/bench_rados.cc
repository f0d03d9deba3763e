// bench_rados: save and load throughput of 1, 2 and 3 ckpt-servers over one
// RADOS pool of a throw-away test cluster (scripts/ceph-dev-cluster.sh),
// beside one server on RocksDB, in one run. Each of N clients saves (then
// loads) 1/N of a workload through its own server at the same time; the
// aggregate GB/s and the servers' CPU seconds per GB are printed. On a small
// machine the cluster, the servers and the clients share the same cores:
// read the cost per byte and the trend, not the absolute figures. Not a
// test.
//
//   bench_rados [--scale 0.25] [--workload gpt2|small] [--osds 1]
//
// With --osds 3 the rows "rados-ec" keep the chunks in the cluster's
// erasure-coded pool (k=2, m=1: --rados-data-pool ckpt-data).

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "client/raw_client.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// User + system CPU seconds a process has used.
double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(in, line);
  std::istringstream fields(line.substr(line.rfind(')') + 2));
  std::string skip;
  for (int i = 0; i < 11; ++i) fields >> skip;  // fields 3..13
  double utime = 0, stime = 0;
  fields >> utime >> stime;
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Shard k of n: every n-th tensor, so shards have about the same bytes.
client::SaveInput Shard(const Data& d, size_t k, size_t n) {
  client::SaveInput in;
  in.tree.push_back(d.input.tree[0]);
  in.bytes.emplace_back();
  uint32_t children = 0;
  for (size_t t = k; t < d.tensor_nodes.size(); t += n) {
    const size_t node = d.tensor_nodes[t];
    in.tree.push_back(d.input.tree[node]);
    in.bytes.push_back(d.input.bytes[node]);
    ++children;
  }
  in.tree[0].size = children;
  return in;
}

struct Row {
  std::string backend;
  int servers = 0;
  double save_gbps = 0, load_gbps = 0, server_cpu_per_gb = 0;
};

// N clients, each through its own server, save then load their shard at
// once.
absl::StatusOr<Row> Measure(const std::string& backend, const Data& data,
                            std::vector<std::unique_ptr<testing::ServerProcess>>& servers) {
  const size_t n = servers.size();
  std::vector<std::unique_ptr<client::RawClient>> clients;
  for (auto& s : servers) {
    auto c = client::RawClient::Connect(s->address(), {});
    if (!c.ok()) return c.status();
    clients.push_back(*std::move(c));
  }
  double cpu = 0;
  for (auto& s : servers) cpu -= CpuSeconds(s->pid());
  std::vector<absl::Status> errors(n);
  auto run = [&](auto fn) {
    std::vector<std::thread> threads;
    const auto t0 = Clock::now();
    for (size_t k = 0; k < n; ++k) threads.emplace_back([&, k] { errors[k] = fn(k); });
    for (auto& t : threads) t.join();
    return Since(t0);
  };
  const double save_s = run([&](size_t k) {
    return clients[k]->Save(absl::StrCat("bench/shard-", k), Shard(data, k, n), {}).status();
  });
  for (const auto& e : errors) {
    if (!e.ok()) return e;
  }
  const double load_s = run([&](size_t k) -> absl::Status {
    client::LoadOptions options;
    return clients[k]->Load(absl::StrCat("bench/shard-", k), options).status();
  });
  for (const auto& e : errors) {
    if (!e.ok()) return e;
  }
  for (auto& s : servers) cpu += CpuSeconds(s->pid());
  Row row;
  row.backend = backend;
  row.servers = static_cast<int>(n);
  row.save_gbps = data.total / save_s / 1e9;
  row.load_gbps = data.total / load_s / 1e9;
  row.server_cpu_per_gb = cpu / (2 * data.total / 1e9);
  return row;
}

int Run(int argc, char** argv) {
  CLI::App app{"bench_rados: 1-3 ckpt-servers over one RADOS pool beside RocksDB"};
  WorkloadOptions workload_options;
  workload_options.scale = 0.25;
  workload_options.workload = "gpt2";
  AddWorkloadOptions(app, &workload_options);
  int osds = 1;
  app.add_option("--osds", osds, "OSDs of the test cluster (1-3)")->check(CLI::Range(1, 3));
  CLI11_PARSE(app, argc, argv);
  const std::vector<Workload> workloads = SelectWorkloads(workload_options);
  testing::TempDir dir;
  const std::string script = std::string(CKPT_SOURCE_DIR) + "/scripts/ceph-dev-cluster.sh";
  const std::string cluster = dir.path() + "/ceph";
  auto started = testing::RunCommand({"bash", script, "start", cluster, std::to_string(osds)});
  if (started.exit_code != 0) {
    std::fprintf(stderr, "cannot start the test cluster:\n%s%s\n", started.out.c_str(),
                 started.err.c_str());
    return 1;
  }
  const std::string conf = cluster + "/ceph.conf";
  std::printf("ckpt RADOS benchmark: %d OSD(s) on files, %u CPUs, scale %.3g\n", osds,
              std::thread::hardware_concurrency(), workload_options.scale);
  int status = 0;
  for (const Workload& w : workloads) {
    const Data data = Materialize(w, 42);
    std::printf(
        "== %s: %zu tensors, %.1f MB; N clients each save, then load, 1/N of it at "
        "once through their own server\n",
        w.name.c_str(), w.shapes.size(), data.total / 1e6);
    std::printf("  %-8s %7s %10s %10s %18s\n", "store", "servers", "save GB/s", "load GB/s",
                "server CPU s/GB");
    std::vector<Row> rows;
    {
      std::vector<std::unique_ptr<testing::ServerProcess>> servers;
      auto s = testing::ServerProcess::Start(dir.path() + "/rocksdb-" + w.name);
      if (!s.ok()) return 1;
      servers.push_back(*std::move(s));
      auto row = Measure("rocksdb", data, servers);
      if (!row.ok()) {
        std::fprintf(stderr, "rocksdb: %s\n", row.status().ToString().c_str());
        return 1;
      }
      rows.push_back(*row);
    }
    // With 3 OSDs, also with the chunks in the erasure-coded pool (k=2, m=1).
    std::vector<std::pair<std::string, std::string>> variants = {{"rados", ""}};
    if (osds == 3) variants.push_back({"rados-ec", "ckpt-data"});
    for (const auto& [label, data_pool] : variants) {
      for (int n = 1; n <= 3 && status == 0; ++n) {
        std::vector<std::unique_ptr<testing::ServerProcess>> servers;
        for (int i = 0; i < n; ++i) {
          std::vector<std::string> flags = {"--store",
                                            "rados",
                                            "--rados-conf",
                                            conf,
                                            "--rados-namespace-prefix",
                                            absl::StrCat(w.name, "-", label, "-", n, "/"),
                                            "--log-level",
                                            "warn"};
          if (!data_pool.empty()) {
            flags.push_back("--rados-data-pool");
            flags.push_back(data_pool);
          }
          auto s = testing::ServerProcess::Start(dir.path() + "/unused", flags);
          if (!s.ok()) {
            std::fprintf(stderr, "%s\n", s.status().ToString().c_str());
            return 1;
          }
          servers.push_back(*std::move(s));
        }
        auto row = Measure(label, data, servers);
        if (!row.ok()) {
          std::fprintf(stderr, "%s x%d: %s\n", label.c_str(), n, row.status().ToString().c_str());
          status = 1;
          break;
        }
        rows.push_back(*row);
      }
    }
    for (const Row& r : rows) {
      std::printf("  %-8s %7d %10.2f %10.2f %18.2f\n", r.backend.c_str(), r.servers, r.save_gbps,
                  r.load_gbps, r.server_cpu_per_gb);
    }
    if (rows.size() >= 2) {
      std::printf("  rados x1 / rocksdb: save x%.2f, load x%.2f\n\n",
                  rows[1].save_gbps / rows[0].save_gbps, rows[1].load_gbps / rows[0].load_gbps);
    }
  }
  testing::RunCommand({"bash", script, "stop", cluster});
  return status;
}

}  // namespace
}  // namespace ckpt::bench

int main(int argc, char** argv) { return ckpt::bench::Run(argc, argv); }
