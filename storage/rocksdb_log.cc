// The store's RocksDB info log (rocksdb_log.h).

#include "storage/rocksdb_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace ckpt::storage::internal {
namespace {

namespace fs = std::filesystem;

constexpr char kLogName[] = "LOG";
constexpr char kOldPrefix[] = "LOG.old.";

int64_t NowMicros() {
  struct timeval now;
  gettimeofday(&now, nullptr);
  return int64_t{now.tv_sec} * 1000000 + now.tv_usec;
}

// "2026/12/02-03:20:52.126113 7f2a... " as RocksDB's own logger starts a line.
std::string LinePrefix() {
  struct timeval now;
  gettimeofday(&now, nullptr);
  struct tm t;
  localtime_r(&now.tv_sec, &t);
  char buffer[64];
  const int n = snprintf(buffer, sizeof(buffer), "%04d/%02d/%02d-%02d:%02d:%02d.%06ld %zx ",
                         t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                         static_cast<long>(now.tv_usec),
                         std::hash<std::thread::id>()(std::this_thread::get_id()));
  return std::string(buffer, n > 0 ? std::min<size_t>(n, sizeof(buffer) - 1) : 0);
}

class FileLogger : public rocksdb::Logger {
 public:
  FileLogger(std::string dir, int keep_files, uint64_t max_file_bytes)
      : dir_(std::move(dir)),
        keep_files_(std::max(keep_files, 1)),
        max_file_bytes_(max_file_bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    RotateLocked();
  }
  ~FileLogger() override {
    if (fd_ >= 0) close(fd_);
  }

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    std::string line = LinePrefix();
    const size_t prefix = line.size();
    va_list copy;
    va_copy(copy, ap);
    char small[512];
    const int n = vsnprintf(small, sizeof(small), format, copy);
    va_end(copy);
    if (n < 0) return;
    if (static_cast<size_t>(n) < sizeof(small)) {
      line.append(small, n);
    } else {
      line.resize(prefix + n + 1);
      vsnprintf(line.data() + prefix, n + 1, format, ap);
      line.resize(prefix + n);
    }
    if (line.back() != '\n') line.push_back('\n');

    std::lock_guard<std::mutex> lock(mu_);
    if (fd_ < 0) {
      // The LOG could not be opened (no room for it, no descriptor left):
      // try again, at most once a second.
      const int64_t now = NowMicros();
      if (now - last_open_attempt_ < 1000000) return;
      RotateLocked();
      if (fd_ < 0) return;
    } else if (max_file_bytes_ > 0 && bytes_ + line.size() > max_file_bytes_) {
      RotateLocked();
      if (fd_ < 0) return;
    }
    // One write(2) per line. A short one (no room) drops the rest of the
    // line and nothing else: the next line that finds room starts on a line
    // of its own.
    if (cut_line_) line.insert(line.begin(), '\n');
    const ssize_t written = write(fd_, line.data(), line.size());
    if (written > 0) {
      bytes_ += written;
      cut_line_ = static_cast<size_t>(written) < line.size();
    }
  }

  size_t GetLogFileSize() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return bytes_;
  }

 private:
  // Moves the live LOG aside (if any), drops old files past keep_files_, and
  // opens a fresh LOG. Failures leave fd_ < 0: lines are dropped.
  void RotateLocked() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
    bytes_ = 0;
    cut_line_ = false;
    last_open_attempt_ = NowMicros();
    std::error_code ec;
    const fs::path live = fs::path(dir_) / kLogName;
    if (fs::exists(live, ec)) {
      // Stamps only grow, even if the clock steps back: the newest file
      // always sorts last.
      last_stamp_ = std::max(last_stamp_ + 1, NowMicros());
      fs::rename(live, fs::path(dir_) / absl::StrCat(kOldPrefix, last_stamp_), ec);
    }
    std::vector<std::string> old;
    for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (absl::StartsWith(name, kOldPrefix)) old.push_back(name);
    }
    // Same-length microsecond stamps sort as numbers.
    std::sort(old.begin(), old.end(), [](const std::string& a, const std::string& b) {
      return a.size() != b.size() ? a.size() < b.size() : a < b;
    });
    const size_t keep_old = static_cast<size_t>(keep_files_ - 1);
    for (size_t i = 0; i + keep_old < old.size(); ++i) fs::remove(fs::path(dir_) / old[i], ec);
    fd_ = open(live.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    // (A LOG that could not be moved aside is appended to: count its bytes.)
    struct stat st;
    if (fd_ >= 0 && fstat(fd_, &st) == 0) bytes_ = static_cast<uint64_t>(st.st_size);
  }

  const std::string dir_;
  const int keep_files_;
  const uint64_t max_file_bytes_;
  mutable std::mutex mu_;
  int fd_ = -1;
  uint64_t bytes_ = 0;
  bool cut_line_ = false;  // the last line written was cut short
  int64_t last_open_attempt_ = 0;
  int64_t last_stamp_ = 0;  // of the newest LOG.old.<stamp> this logger made
};

class DiscardingLogger : public rocksdb::Logger {
 public:
  using rocksdb::Logger::Logv;
  void Logv(const char*, va_list) override {}
};

}  // namespace

std::shared_ptr<rocksdb::Logger> OpenRocksDbLog(const std::string& dir, int keep_files,
                                                uint64_t max_file_bytes) {
  return std::make_shared<FileLogger>(dir, keep_files, max_file_bytes);
}

std::shared_ptr<rocksdb::Logger> DiscardingRocksDbLog() {
  return std::make_shared<DiscardingLogger>();
}

}  // namespace ckpt::storage::internal
