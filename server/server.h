#ifndef CKPT_SERVER_SERVER_H_
#define CKPT_SERVER_SERVER_H_

// The ckpt server: a CheckpointService over a Store, plus gRPC health and
// reflection. Start() binds (port 0 picks a free port), port() reports it,
// Wait() blocks until Shutdown().

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rpc/protocol.h"
#include "server/telemetry.h"
#include "storage/store.h"

namespace ckpt::server {

/// Options of Server::Start. Every field has a ckpt-server flag (quotas are
/// in store: StoreOptions::namespace_quota_bytes and namespace_quotas).
struct ServerOptions {
  /// Address to listen on, HOST:PORT. Default: "0.0.0.0:50051".
  std::string listen = "0.0.0.0:50051";
  /// Storage options (data directory, chunk write mode). Required: path.
  storage::StoreOptions store;
  /// Chunk size clients are told to use. Default: 4 MiB. At most
  /// store.max_chunk_bytes.
  uint32_t chunk_size = 4 << 20;
  /// Largest request or response message. Default: 4 MiB + 64 KiB, so that
  /// clients send a whole 4 MiB chunk in one message (the server stores it
  /// as received); with less, they send 1 MiB pieces that it assembles.
  /// At least 1 MiB + 64 KiB.
  uint32_t max_message_bytes = static_cast<uint32_t>(rpc::kMaxRequestBytes);
  /// Most nodes in one saved tree. Default: 1,000,000.
  uint64_t max_tree_nodes = 1'000'000;
  /// Most encoded tree bytes in one save. Default: 256 MiB.
  uint64_t max_tree_bytes = 256ull << 20;
  /// Most bytes of value trees held in memory at once, server-wide: the
  /// trees of saves in flight and of multi-part parts waiting for the rest
  /// of their save (a tree costs ~100-300 bytes a node in memory). A save
  /// whose tree would go past it gets ResourceExhausted. 0: no limit.
  /// Default: 1 GiB.
  uint64_t max_tree_memory = 1ull << 30;
  /// How long the first part of a multi-part save waits for the others.
  /// Default: 10 minutes.
  absl::Duration part_timeout = absl::Minutes(10);
  /// Threads running storage work for RPCs. Default: 4.
  int worker_threads = 4;

  /// The NaN/Inf guard for names starting with any of these prefixes ("*":
  /// every name): a save whose tensors hold NaN or infinities, or whose
  /// float tensors have no statistics, is refused with FailedPrecondition
  /// and nothing is committed, whatever the client asked
  /// (SaveBegin.reject_nonfinite asks for it per save). Default: none.
  std::vector<std::string> reject_nonfinite;

  /// Directory the Backup RPC writes backups into (one subdirectory each),
  /// on the store's file system for cheap hard-linked backups; created at
  /// Start (FailedPrecondition if it cannot be). Empty:
  /// backups are off (Backup answers FAILED_PRECONDITION). Default: "".
  std::string backup_dir;
  /// Tokens file (format in server/auth.h). Empty: development mode, every
  /// caller may do everything. Default: "".
  std::string tokens_file;
  /// PEM server certificate chain and private key: both set serves TLS
  /// only; both empty serves plaintext. Default: "".
  std::string tls_cert_file;
  std::string tls_key_file;
  /// PEM CA certificates: when set (with TLS), clients must present a
  /// certificate signed by one of them (mTLS). Default: "".
  std::string tls_client_ca_file;

  /// HOST:PORT of the Prometheus endpoint (http://HOST:PORT/metrics); port
  /// 0 picks a free one. Empty: no endpoint. Default: "" (ckpt-server's
  /// flag defaults to 0.0.0.0:9464).
  std::string metrics_listen;
  /// HOST:PORT of the read-only web page (server/web_ui.h: checkpoints,
  /// versions, statistics, diffs, lineage, with the same tokens); port 0
  /// picks a free one. Empty: no web page. Default: "".
  std::string http_listen;
  /// Least severe per-RPC and server log lines written to stderr.
  /// Default: kInfo.
  LogLevel log_level = LogLevel::kInfo;

  /// Most Save and Load streams open at once; one more is refused with
  /// ResourceExhausted. 0: no limit. Default: 256.
  int max_streams = 256;
  /// A Save waiting this long for the client's next message, or a Load
  /// waiting this long for the client to take the next one, is cancelled
  /// (DeadlineExceeded for a Save; the upload is discarded). Zero: never.
  /// Default: 5 minutes.
  absl::Duration idle_timeout = absl::Minutes(5);
};

class CheckpointService;

/// A running server. Thread-safe.
class Server {
 public:
  /// Opens the store, binds options.listen and starts serving.
  /// Unavailable if the address cannot be bound; storage errors as is.
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerOptions options);

  ~Server();

  /// The bound port.
  int port() const { return port_; }
  /// The bound port of the metrics endpoint; 0 when there is none.
  int metrics_port() const;
  /// The bound port of the web page; 0 when there is none.
  int http_port() const;
  /// Whether no tokens file is in use (everyone may do everything).
  bool development_mode() const;
  /// Re-reads the tokens file (ckpt-server does on SIGHUP); on error the
  /// tokens in use stay. FailedPrecondition in development mode.
  absl::Status ReloadTokens();
  /// The metrics text a scrape of the endpoint returns.
  std::string ScrapeMetrics() const;

  /// Stops accepting RPCs, lets in-flight ones finish for up to `grace`, then
  /// cancels the rest (uncommitted saves leave nothing visible).
  void Shutdown(absl::Duration grace);

  /// Blocks until Shutdown() has completed.
  void Wait();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl, int port);
  std::unique_ptr<Impl> impl_;
  int port_;
};

}  // namespace ckpt::server

#endif  // CKPT_SERVER_SERVER_H_
