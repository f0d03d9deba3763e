#include "tests/testing/ceph_cluster.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace ckpt::testing {
namespace {

namespace fs = std::filesystem;

std::string Script() { return std::string(CKPT_SOURCE_DIR) + "/scripts/ceph-dev-cluster.sh"; }

// Runs `command`; its output and exit status.
std::pair<std::string, int> Run(const std::string& command) {
  std::string out;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return {"popen failed", -1};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  return {out, pclose(p)};
}

// Stops the clusters of test processes that are gone.
void ReapLeftovers() {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::temp_directory_path(), ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("ckpt-ceph-", 0) != 0) continue;
    std::ifstream owner(entry.path() / "owner.pid");
    pid_t pid = 0;
    if (!(owner >> pid)) {
      // Being made right now, or left half made long ago.
      const auto age = fs::file_time_type::clock::now() - fs::last_write_time(entry.path(), ec);
      if (ec || age < std::chrono::minutes(10)) continue;
    } else if (pid > 0 && kill(pid, 0) == 0) {
      continue;
    }
    Run(absl::StrCat("bash ", Script(), " stop ", entry.path().string(), "/c; rm -rf ",
                     entry.path().string()));
  }
}

std::string cluster_dir;

void StopCluster() {
  if (!cluster_dir.empty()) {
    Run(absl::StrCat("bash ", Script(), " stop ", cluster_dir, "/c; rm -rf ", cluster_dir));
  }
}

}  // namespace

absl::StatusOr<std::string> TestCephConf() {
  if (const char* conf = getenv("CKPT_TEST_CEPH_CONF"); conf != nullptr && *conf) return conf;
  static std::once_flag once;
  static absl::StatusOr<std::string> result = absl::UnknownError("not started");
  std::call_once(once, [] {
    ReapLeftovers();
    std::string tmpl = (fs::temp_directory_path() / "ckpt-ceph-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      result = absl::InternalError("mkdtemp failed");
      return;
    }
    cluster_dir = tmpl;
    // Owned before it starts: another test process reaps only clusters
    // whose owner is gone.
    std::ofstream(cluster_dir + "/owner.pid") << getpid();
    atexit(StopCluster);
    auto [out, rc] = Run(absl::StrCat("bash ", Script(), " start ", cluster_dir, "/c 3"));
    const std::string conf = cluster_dir + "/c/ceph.conf";
    if (rc != 0 || !fs::exists(conf)) {
      result = absl::UnavailableError(absl::StrCat("scripts/ceph-dev-cluster.sh failed: ", out));
      return;
    }
    result = conf;
  });
  return result;
}

absl::StatusOr<std::string> StartOwnCephCluster(const std::string& dir) {
  auto [out, rc] = Run(absl::StrCat("bash ", Script(), " start ", dir, " 1"));
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("scripts/ceph-dev-cluster.sh failed: ", out));
  }
  return dir + "/ceph.conf";
}

void StopCephCluster(const std::string& dir) {
  Run(absl::StrCat("bash ", Script(), " stop ", dir));
}

}  // namespace ckpt::testing
