#include "server/telemetry.h"

#include <grpc/support/log.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace ckpt::server {
namespace {

absl::string_view LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
    case LogLevel::kOff:
      return "off";
  }
  return "?";
}

bool NeedsQuotes(absl::string_view value) {
  if (value.empty()) return true;
  for (char c : value) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20 ||
        c == 0x7f) {
      return true;
    }
  }
  return false;
}

void AppendValue(std::string* out, absl::string_view value) {
  if (!NeedsQuotes(value)) {
    out->append(value.data(), value.size());
    return;
  }
  out->push_back('"');
  for (char c : value) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          absl::StrAppendFormat(out, "\\x%02x", static_cast<unsigned char>(c));
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

LogLevel LevelFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kUnknown:
      return LogLevel::kError;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kUnavailable:
      return LogLevel::kWarn;
    default:
      return LogLevel::kInfo;
  }
}

// The store's totals, read at each scrape (Store::Stats scans the version
// and chunk-reference records: cheap next to a scrape interval).
class StoreCollector final : public prometheus::Collectable {
 public:
  explicit StoreCollector(storage::Store* store) : store_(store) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    absl::StatusOr<storage::StoreStats> stats = store_->Stats();
    if (!stats.ok()) return {};
    std::vector<prometheus::MetricFamily> out;
    auto gauge = [&](const char* name, const char* help, double value) {
      prometheus::MetricFamily family;
      family.name = name;
      family.help = help;
      family.type = prometheus::MetricType::Gauge;
      prometheus::ClientMetric metric;
      metric.gauge.value = value;
      family.metric.push_back(std::move(metric));
      out.push_back(std::move(family));
    };
    const double stored = static_cast<double>(stats->stored_bytes);
    const double logical = static_cast<double>(stats->logical_bytes);
    gauge("ckpt_stored_bytes", "Bytes of distinct chunks committed versions reference", stored);
    gauge("ckpt_logical_bytes", "Tensor bytes of all versions before deduplication", logical);
    gauge("ckpt_dedup_ratio", "ckpt_logical_bytes / ckpt_stored_bytes (1 when empty)",
          stored > 0 ? logical / stored : 1.0);
    gauge("ckpt_checkpoints", "Checkpoint names with at least one version",
          static_cast<double>(stats->checkpoints));
    gauge("ckpt_versions", "Committed versions", static_cast<double>(stats->versions));
    gauge("ckpt_chunks", "Distinct chunks committed versions reference",
          static_cast<double>(stats->chunks));
    gauge("ckpt_disk_bytes", "Bytes of the RocksDB files (SST and WAL)",
          static_cast<double>(stats->disk_bytes));
    gauge("ckpt_active_uploads", "Uploads in progress", static_cast<double>(stats->active_uploads));
    gauge("ckpt_garbage_bytes", "Bytes gc would reclaim now (not in ckpt_stored_bytes)",
          static_cast<double>(stats->garbage_bytes));
    return out;
  }

 private:
  storage::Store* store_;
};

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view text) {
  for (LogLevel level :
       {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError, LogLevel::kOff}) {
    if (text == LevelName(level)) return level;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("log level must be debug, info, warn, error or off, not '", text, "'"));
}

std::string Logger::Format(LogLevel level, absl::string_view msg, const Fields& fields) {
  std::string line = absl::StrCat("level=", LevelName(level), " msg=");
  AppendValue(&line, msg);
  for (const auto& [key, value] : fields) {
    absl::StrAppend(&line, " ", key, "=");
    // Values carry user strings (names, keys, error messages): cut, so a
    // hostile request cannot write megabyte log lines.
    if (value.size() <= kMaxLogValue) {
      AppendValue(&line, value);
    } else {
      AppendValue(&line, absl::StrCat(absl::string_view(value).substr(0, kMaxLogValue), "... (",
                                      value.size(), " bytes)"));
    }
  }
  return line;
}

void Logger::Log(LogLevel level, absl::string_view msg, const Fields& fields) const {
  if (!Enabled(level)) return;
  std::string line = absl::StrCat(
      "time=", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " ",
      Format(level, msg, fields), "\n");
  // One fwrite per line: stdio locks the stream, so lines never interleave.
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

namespace {

const Logger* grpc_logger = nullptr;

void LogGrpcLine(gpr_log_func_args* args) {
  const LogLevel level = args->severity == GPR_LOG_SEVERITY_ERROR  ? LogLevel::kError
                         : args->severity == GPR_LOG_SEVERITY_INFO ? LogLevel::kInfo
                                                                   : LogLevel::kDebug;
  absl::string_view file = args->file != nullptr ? args->file : "";
  if (size_t slash = file.rfind('/'); slash != absl::string_view::npos) {
    file.remove_prefix(slash + 1);
  }
  grpc_logger->Log(level, "grpc",
                   {{"source", absl::StrCat(file, ":", args->line)},
                    {"detail", args->message != nullptr ? args->message : ""}});
}

}  // namespace

void LogGrpcAs(LogLevel level) {
  static const Logger* const logger = new Logger(level);  // never freed: gRPC may log at exit
  grpc_logger = logger;
  gpr_set_log_function(&LogGrpcLine);
}

struct Telemetry::Families {
  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Histogram>& duration;
  prometheus::Family<prometheus::Counter>& received;
  prometheus::Family<prometheus::Counter>& sent;
  prometheus::Counter& saved_logical;
  prometheus::Family<prometheus::Gauge>& streams;
  prometheus::Counter& nonfinite_refusals;
  prometheus::Counter& assembled_chunks;
  prometheus::Gauge& parts_waiting;
  prometheus::Counter& abandoned_saves;
};

Telemetry::Telemetry(storage::Store* store, LogLevel level)
    : logger_(level),
      registry_(std::make_shared<prometheus::Registry>()),
      store_collector_(std::make_shared<StoreCollector>(store)) {
  prometheus::Registry& r = *registry_;
  families_.reset(new Families{
      prometheus::BuildCounter()
          .Name("ckpt_requests_total")
          .Help("Finished RPCs of ckpt.v1.CheckpointService by method and gRPC status code")
          .Register(r),
      prometheus::BuildHistogram()
          .Name("ckpt_request_duration_seconds")
          .Help("RPC latency from arrival to the end of the call")
          .Register(r),
      prometheus::BuildCounter()
          .Name("ckpt_received_bytes_total")
          .Help("Tensor bytes received (chunk data of saves)")
          .Register(r),
      prometheus::BuildCounter()
          .Name("ckpt_sent_bytes_total")
          .Help("Tensor bytes sent (data of loads)")
          .Register(r),
      prometheus::BuildCounter()
          .Name("ckpt_saved_logical_bytes_total")
          .Help("Tensor bytes of committed saves, whether sent or deduplicated")
          .Register(r)
          .Add({}),
      prometheus::BuildGauge()
          .Name("ckpt_streams_in_flight")
          .Help("Save and Load streams open now")
          .Register(r),
      prometheus::BuildCounter()
          .Name("ckpt_nonfinite_refusals_total")
          .Help("Saves refused because tensors held NaN or infinities (the NaN/Inf guard)")
          .Register(r)
          .Add({}),
      prometheus::BuildCounter()
          .Name("ckpt_assembled_chunks_total")
          .Help("Chunks of saves received in pieces and joined by the server (clients send a "
                "chunk whole when --max-message-bytes holds it)")
          .Register(r)
          .Add({}),
      prometheus::BuildGauge()
          .Name("ckpt_parts_waiting")
          .Help("Parts of multi-part saves held waiting for their other ranks")
          .Register(r)
          .Add({}),
      prometheus::BuildCounter()
          .Name("ckpt_abandoned_saves_total")
          .Help("Multi-part saves abandoned because a rank's stream failed before its part "
                "was in")
          .Register(r)
          .Add({}),
  });
  // Series that exist from the start, so that dashboards see zeros.
  for (const char* method : {"Save", "Load"}) families_->streams.Add({{"method", method}});
  families_->received.Add({{"method", "Save"}});
  families_->sent.Add({{"method", "Load"}});
}

Telemetry::~Telemetry() = default;

std::vector<std::shared_ptr<prometheus::Collectable>> Telemetry::collectables() const {
  return {registry_, store_collector_};
}

std::string Telemetry::Scrape() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (auto& f : store_collector_->Collect()) families.push_back(std::move(f));
  return prometheus::TextSerializer().Serialize(families);
}

void Telemetry::RecordRpc(absl::string_view method, absl::StatusCode code,
                          absl::Duration duration) {
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
      1,     2.5,    5,     10,   30,    60,   120, 300,  600};
  const std::string m(method);
  families_->requests.Add({{"method", m}, {"code", absl::StatusCodeToString(code)}}).Increment();
  families_->duration.Add({{"method", m}}, kBuckets).Observe(absl::ToDoubleSeconds(duration));
}

void Telemetry::AddReceived(absl::string_view method, uint64_t bytes) {
  families_->received.Add({{"method", std::string(method)}}).Increment(static_cast<double>(bytes));
}

void Telemetry::AddSent(absl::string_view method, uint64_t bytes) {
  families_->sent.Add({{"method", std::string(method)}}).Increment(static_cast<double>(bytes));
}

void Telemetry::AddSavedLogical(uint64_t bytes) {
  families_->saved_logical.Increment(static_cast<double>(bytes));
}

void Telemetry::AddNonfiniteRefusal() { families_->nonfinite_refusals.Increment(); }

void Telemetry::AddAssembledChunk() { families_->assembled_chunks.Increment(); }

void Telemetry::StreamOpened(absl::string_view method) {
  families_->streams.Add({{"method", std::string(method)}}).Increment();
}

void Telemetry::StreamClosed(absl::string_view method) {
  families_->streams.Add({{"method", std::string(method)}}).Decrement();
}

void Telemetry::PartWaiting() { families_->parts_waiting.Increment(); }

void Telemetry::PartDone() { families_->parts_waiting.Decrement(); }

void Telemetry::AddAbandonedSave() { families_->abandoned_saves.Increment(); }

CallRecord::CallRecord(Telemetry* telemetry, absl::string_view method, std::string peer)
    : telemetry_(telemetry), method_(method), peer_(std::move(peer)), start_(absl::Now()) {}

void CallRecord::End(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ended_) return;
  ended_ = true;
  const absl::Duration duration = absl::Now() - start_;
  const uint64_t in = bytes_in_.load(std::memory_order_relaxed);
  const uint64_t out = bytes_out_.load(std::memory_order_relaxed);
  telemetry_->RecordRpc(method_, status.code(), duration);
  if (in > 0) telemetry_->AddReceived(method_, in);
  if (out > 0) telemetry_->AddSent(method_, out);
  const LogLevel level = LevelFor(status.code());
  const Logger& logger = telemetry_->logger();
  if (!logger.Enabled(level)) return;
  Logger::Fields fields = {
      {"method", method_},
      {"checkpoint", checkpoint_},
      {"version", version_ ? absl::StrCat(version_) : std::string()},
      {"bytes_in", absl::StrCat(in)},
      {"bytes_out", absl::StrCat(out)},
      {"duration_ms", absl::StrFormat("%.3f", absl::ToDoubleMilliseconds(duration))},
      {"status", absl::StatusCodeToString(status.code())},
      {"peer", peer_},
      {"principal", principal_},
  };
  if (!status.ok()) fields.emplace_back("error", std::string(status.message()));
  logger.Log(level, "rpc", fields);
}

}  // namespace ckpt::server
