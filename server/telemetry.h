#ifndef CKPT_SERVER_TELEMETRY_H_
#define CKPT_SERVER_TELEMETRY_H_

// What the server tells operators: one structured log line per RPC (logfmt
// on stderr) and Prometheus metrics.
//
// Log line (one per RPC, at its end):
//   time=2024-05-01T12:34:56.789Z level=info msg=rpc method=Save
//   checkpoint=team/run-1/model version=3 bytes_in=4194304 bytes_out=0
//   duration_ms=12.345 status=OK peer=ipv4:127.0.0.1:51234 principal=trainer
//   [error="..."]
// `checkpoint`/`version` are empty when the RPC has none; `bytes_in` counts
// tensor bytes received (Save chunks), `bytes_out` tensor bytes sent (Load).
// Level: info for OK and ordinary client errors, warn for UNAUTHENTICATED,
// PERMISSION_DENIED, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and UNAVAILABLE,
// error for INTERNAL, DATA_LOSS and UNKNOWN.
//
// Metrics (names are stable; see README "Metrics"):
//   ckpt_requests_total{method,code}          counter   finished RPCs
//   ckpt_request_duration_seconds{method}     histogram RPC latency
//   ckpt_received_bytes_total{method}         counter   tensor bytes received
//   ckpt_sent_bytes_total{method}             counter   tensor bytes sent
//   ckpt_saved_logical_bytes_total            counter   tensor bytes of committed
//                                                       saves, sent or deduplicated
//   ckpt_streams_in_flight{method}            gauge     Save and Load streams open
//   ckpt_parts_waiting                        gauge     multi-part parts waiting for
//                                                       their other ranks
//   ckpt_abandoned_saves_total                counter   multi-part saves abandoned
//                                                       (a rank failed before its part)
//   ckpt_nonfinite_refusals_total             counter   saves the NaN/Inf guard refused
//   ckpt_assembled_chunks_total               counter   chunks received in pieces
//   ckpt_stored_bytes, ckpt_logical_bytes, ckpt_dedup_ratio, ckpt_checkpoints,
//   ckpt_versions, ckpt_chunks, ckpt_disk_bytes, ckpt_active_uploads
//                                             gauges    store totals, read at scrape

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "storage/store.h"

namespace prometheus {
class Collectable;
class Counter;
class Gauge;
class Histogram;
template <typename T>
class Family;
class Registry;
}  // namespace prometheus

namespace ckpt::server {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

/// "debug", "info", "warn", "error" or "off" -> LogLevel; InvalidArgument
/// otherwise.
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view text);

/// Writes logfmt lines to stderr, one write per line. Thread-safe.
class Logger {
 public:
  using Fields = std::vector<std::pair<absl::string_view, std::string>>;

  explicit Logger(LogLevel level) : level_(level) {}

  bool Enabled(LogLevel level) const { return level >= level_ && level != LogLevel::kOff; }

  /// Longest value written; longer ones are cut, with their length noted.
  static constexpr size_t kMaxLogValue = 1024;

  /// "time=... level=... msg=MSG k=v ...": values quoted when they hold
  /// spaces, quotes, '=' or control characters, or are empty; cut past
  /// kMaxLogValue bytes.
  void Log(LogLevel level, absl::string_view msg, const Fields& fields) const;

  /// The line Log() would write, without the time and the newline.
  static std::string Format(LogLevel level, absl::string_view msg, const Fields& fields);

 private:
  LogLevel level_;
};

/// Routes gRPC's own log lines (those GRPC_VERBOSITY lets through: errors
/// by default, such as a failed TLS handshake) through a Logger of `level`,
/// as "level=error msg=grpc source=FILE:LINE detail=...", instead of
/// gRPC's own format. Process-wide; the first call decides the level.
void LogGrpcAs(LogLevel level);

/// The service's Prometheus metrics and logger. Thread-safe.
class Telemetry {
 public:
  /// `store` (for the totals read at scrape time) must outlive the
  /// collectables this returns being scraped.
  Telemetry(storage::Store* store, LogLevel level);
  ~Telemetry();

  const Logger& logger() const { return logger_; }

  /// What an exposer serves: the registry and the store totals.
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables() const;

  /// The metrics text a scrape returns (for tests and tools).
  std::string Scrape() const;

  void RecordRpc(absl::string_view method, absl::StatusCode code, absl::Duration duration);
  void AddReceived(absl::string_view method, uint64_t bytes);
  void AddSent(absl::string_view method, uint64_t bytes);
  void AddSavedLogical(uint64_t bytes);
  void AddNonfiniteRefusal();
  /// A chunk of a save arrived in several pieces that the server joined
  /// (clients send a chunk whole when --max-message-bytes holds it).
  void AddAssembledChunk();
  void StreamOpened(absl::string_view method);
  void StreamClosed(absl::string_view method);
  /// A multi-part save's part starts / stops waiting for its other ranks.
  void PartWaiting();
  void PartDone();
  /// A multi-part save was abandoned: a rank failed before its part was in.
  void AddAbandonedSave();

 private:
  struct Families;
  Logger logger_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> store_collector_;
  std::unique_ptr<Families> families_;
};

/// One RPC's record: collects what the log line needs and, on End(), logs
/// it and updates the metrics. Thread-safe: a streaming call's reactor sets
/// fields on executor threads while gRPC's cancellation may end it.
class CallRecord {
 public:
  CallRecord(Telemetry* telemetry, absl::string_view method, std::string peer);

  void set_checkpoint(absl::string_view name) {
    std::lock_guard<std::mutex> lock(mu_);
    checkpoint_ = std::string(name);
  }
  void set_version(uint64_t version) {
    std::lock_guard<std::mutex> lock(mu_);
    version_ = version;
  }
  void set_principal(absl::string_view principal) {
    std::lock_guard<std::mutex> lock(mu_);
    principal_ = std::string(principal);
  }
  void AddBytesIn(uint64_t n) { bytes_in_.fetch_add(n, std::memory_order_relaxed); }
  void AddBytesOut(uint64_t n) { bytes_out_.fetch_add(n, std::memory_order_relaxed); }

  /// Logs the line and records the metrics; later calls do nothing.
  void End(const absl::Status& status);

 private:
  Telemetry* telemetry_;
  const std::string method_;
  const std::string peer_;
  const absl::Time start_;
  std::mutex mu_;  // guards the fields below but the counters
  std::string checkpoint_;
  uint64_t version_ = 0;
  std::string principal_;
  std::atomic<uint64_t> bytes_in_{0};
  std::atomic<uint64_t> bytes_out_{0};
  bool ended_ = false;
};

}  // namespace ckpt::server

#endif  // CKPT_SERVER_TELEMETRY_H_
