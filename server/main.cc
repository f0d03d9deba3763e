// ckpt-server: flags (each with an environment variable) -> Start -> Wait.
// SIGTERM and SIGINT drain in-flight RPCs for --shutdown-grace, then cancel
// the rest: a save that has not committed leaves nothing visible. SIGHUP
// re-reads the tokens file.

#include <signal.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/server.h"

namespace {

// "1073741824", "512MiB", "10GiB", "1.5TiB" (binary units; also K, M, G, T
// and KB, MB, GB, TB as decimal) -> bytes.
bool ParseSize(absl::string_view text, uint64_t* bytes) {
  static const std::pair<const char*, double> kUnits[] = {
      {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
      {"KB", 1e3},     {"MB", 1e6},        {"GB", 1e9},           {"TB", 1e12},
      {"B", 1}};
  text = absl::StripAsciiWhitespace(text);
  double scale = 1;
  for (const auto& [suffix, factor] : kUnits) {
    if (absl::EndsWith(text, suffix)) {
      text.remove_suffix(strlen(suffix));
      scale = factor;
      break;
    }
  }
  double value = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(text), &value) || value < 0 ||
      value * scale > 1.8e19) {
    return false;
  }
  *bytes = static_cast<uint64_t>(value * scale);
  return true;
}

std::string CheckSize(std::string& text) {
  uint64_t bytes = 0;
  return ParseSize(text, &bytes) ? "" : "must be a size such as 1073741824, 512MiB or 10GiB";
}

// glibc serves allocations above its adaptive mmap threshold with fresh
// pages from the kernel and gives freed heap tops back: every message and
// chunk buffer of a save (1-4 MiB, allocated on one thread, freed on
// another) then faulted its pages in again: 0.3-0.4 of ~3.3 server CPU
// seconds per 1.5 GB save. Buffers under 32 MiB stay in the heap (8 MiB
// was too little: page faults came back), and a heap keeps up to 32 MiB
// free at its top for the next ones (128 MiB made a server that dropped
// many large trees hold on to their memory). An operator's own malloc
// settings (GLIBC_TUNABLES, MALLOC_*_ variables) win.
void KeepBuffersInTheHeap() {
#ifdef __GLIBC__
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && absl::StrContains(tunables, "glibc.malloc.")) return;
  for (const char* name : {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}) {
    if (std::getenv(name) != nullptr) return;
  }
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 32 << 20);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  KeepBuffersInTheHeap();
  ckpt::server::ServerOptions options;
  std::string data_dir = "./ckpt-data";
  uint32_t chunk_mib = 4;
  uint64_t reserved_disk_mib = 64;
  double part_timeout_s = 600;
  double grace_s = 30;
  bool no_sync = false;
  options.metrics_listen = "0.0.0.0:9464";
  std::string log_level = "info";
  double idle_timeout_s = 300;
  std::string namespace_quota = "0";
  std::vector<std::string> quotas;
  const ckpt::storage::RocksDbTuning default_tuning;
  int background_jobs = default_tuning.max_background_jobs;
  std::string block_cache = absl::StrCat(default_tuning.metadata_block_cache_bytes >> 20, "MiB");
  std::string write_buffer = absl::StrCat(default_tuning.write_buffer_bytes >> 20, "MiB");
  std::string manifest_write_buffer =
      absl::StrCat(default_tuning.manifest_write_buffer_bytes >> 20, "MiB");

  CLI::App app{"ckpt-server: a gRPC checkpoint store for PyTorch training"};
  app.set_version_flag("--version", std::string("ckpt-server ") + CKPT_VERSION);
  app.add_option("--listen", options.listen, "HOST:PORT to listen on")
      ->envname("CKPT_LISTEN")
      ->capture_default_str();
  app.add_option("--data-dir", data_dir, "RocksDB data directory (created if missing)")
      ->envname("CKPT_DATA_DIR")
      ->capture_default_str();
  app.add_option("--chunk-size-mib", chunk_mib, "chunk size clients use, in MiB (1-4)")
      ->envname("CKPT_CHUNK_SIZE_MIB")
      ->check(CLI::Range(1, 4))
      ->capture_default_str();
  app.add_option("--max-message-bytes", options.max_message_bytes,
                 "largest gRPC message accepted or sent (clients send a chunk whole in one "
                 "message when it holds the chunk and 64 KiB); at least 1 MiB + 64 KiB")
      ->envname("CKPT_MAX_MESSAGE_BYTES")
      ->capture_default_str();
  app.add_option("--max-tree-nodes", options.max_tree_nodes, "most nodes in one checkpoint")
      ->envname("CKPT_MAX_TREE_NODES")
      ->capture_default_str();
  app.add_option("--max-tree-bytes", options.max_tree_bytes, "most encoded tree bytes in one save")
      ->envname("CKPT_MAX_TREE_BYTES")
      ->capture_default_str();
  app.add_option("--max-tree-memory", options.max_tree_memory,
                 "most bytes of checkpoint trees held in memory at once, server-wide: saves in "
                 "flight and multi-part parts waiting (0: no limit)")
      ->envname("CKPT_MAX_TREE_MEMORY")
      ->capture_default_str();
  app.add_option("--part-timeout", part_timeout_s,
                 "seconds a multi-part save waits for all its parts")
      ->envname("CKPT_PART_TIMEOUT")
      ->capture_default_str();
  app.add_option("--worker-threads", options.worker_threads, "threads for storage work")
      ->envname("CKPT_WORKER_THREADS")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option(
         "--reserved-disk-mib", reserved_disk_mib,
         "free disk space (MiB) saves leave for deletes, gc and restarts: a save that "
         "would leave less is refused with RESOURCE_EXHAUSTED (0: no reserve file; saves still "
         "leave the largest memtable + 1 MiB for commits)")
      ->envname("CKPT_RESERVED_DISK_MIB")
      ->capture_default_str();
  app.add_flag("--no-sync", no_sync,
               "do not fsync commits (benchmarks only: a crash may lose versions)")
      ->envname("CKPT_NO_SYNC");
  app.add_option("--shutdown-grace", grace_s,
                 "seconds in-flight RPCs may run after SIGTERM before being cancelled")
      ->envname("CKPT_SHUTDOWN_GRACE")
      ->capture_default_str();
  app.add_option("--backup-dir", options.backup_dir,
                 "directory the Backup RPC (`ckpt backup`) writes consistent copies of the "
                 "store into, one subdirectory each (empty: backups off)")
      ->envname("CKPT_BACKUP_DIR");
  app.add_option("--tokens-file", options.tokens_file,
                 "bearer tokens and their rights (format: README, Access control); "
                 "none: development mode, no access control")
      ->envname("CKPT_TOKENS_FILE");
  app.add_option("--tls-cert", options.tls_cert_file, "PEM certificate chain: serve TLS")
      ->envname("CKPT_TLS_CERT");
  app.add_option("--tls-key", options.tls_key_file, "PEM private key of --tls-cert")
      ->envname("CKPT_TLS_KEY");
  app.add_option("--tls-client-ca", options.tls_client_ca_file,
                 "PEM CA certificates: require client certificates they signed (mTLS)")
      ->envname("CKPT_TLS_CLIENT_CA");
  CLI::Option* metrics_listen =
      app.add_option("--metrics-listen", options.metrics_listen,
                     "HOST:PORT of the Prometheus endpoint /metrics (empty: none)")
          ->envname("CKPT_METRICS_LISTEN")
          ->capture_default_str();
  app.add_option("--http-listen", options.http_listen,
                 "HOST:PORT of the read-only web page (checkpoints, versions, statistics, "
                 "diffs, lineage; the same tokens); empty: none")
      ->envname("CKPT_HTTP_LISTEN")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "debug, info (one line per RPC), warn, error or off")
      ->envname("CKPT_LOG_LEVEL")
      ->check(CLI::IsMember({"debug", "info", "warn", "error", "off"}))
      ->capture_default_str();
  app.add_option("--max-streams", options.max_streams,
                 "most Save and Load streams open at once (0: no limit)")
      ->envname("CKPT_MAX_STREAMS")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  app.add_option("--idle-timeout", idle_timeout_s,
                 "seconds a stream may wait for its client before it is cancelled (0: never)")
      ->envname("CKPT_IDLE_TIMEOUT")
      ->check(CLI::Range(0.0, 1e7))
      ->capture_default_str();
  app.add_option("--namespace-quota", namespace_quota,
                 "most bytes (deduplicated) each namespace may hold, e.g. 100GiB (0: no limit)")
      ->envname("CKPT_NAMESPACE_QUOTA")
      ->check(CLI::Validator(CheckSize, "SIZE"))
      ->capture_default_str();
  app.add_option("--quota", quotas,
                 "NAMESPACE=SIZE: quota of one namespace, overriding --namespace-quota "
                 "(repeatable; 0: no limit)")
      ->envname("CKPT_QUOTAS")
      ->delimiter(',')
      ->type_name("NAMESPACE=SIZE");
  app.add_option("--reject-nonfinite", options.reject_nonfinite,
                 "PREFIX: refuse saves of names starting with it whose tensors hold NaN or "
                 "infinities (FAILED_PRECONDITION, nothing saved; '*': every name; repeatable)")
      ->envname("CKPT_REJECT_NONFINITE")
      ->delimiter(',')
      ->type_name("PREFIX");
  // RocksDB tuning (storage::RocksDbTuning): speed and memory only, never
  // what is stored.
  app.add_option("--rocksdb-background-jobs", background_jobs,
                 "flushes and compactions RocksDB runs at once")
      ->envname("CKPT_ROCKSDB_BACKGROUND_JOBS")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--rocksdb-block-cache", block_cache,
                 "block cache of the metadata column families, e.g. 256MiB (0: none; chunk "
                 "reads bypass it)")
      ->envname("CKPT_ROCKSDB_BLOCK_CACHE")
      ->check(CLI::Validator(CheckSize, "SIZE"))
      ->capture_default_str();
  app.add_option("--rocksdb-write-buffer", write_buffer,
                 "memtable size of the chunks, refs, tags and default column families (small "
                 "keeps refcount lookups fast)")
      ->envname("CKPT_ROCKSDB_WRITE_BUFFER")
      ->check(CLI::Validator(CheckSize, "SIZE"))
      ->capture_default_str();
  app.add_option("--rocksdb-manifest-write-buffer", manifest_write_buffer,
                 "memtable size of the manifests column family; keep --reserved-disk-mib above it")
      ->envname("CKPT_ROCKSDB_MANIFEST_WRITE_BUFFER")
      ->check(CLI::Validator(CheckSize, "SIZE"))
      ->capture_default_str();
  std::string store_kind = "rocksdb";
  double rados_timeout_s = absl::ToDoubleSeconds(options.store.rados.op_timeout);
  double rados_lease_s = absl::ToDoubleSeconds(options.store.rados.upload_lease);
  double rados_grace_s = absl::ToDoubleSeconds(options.store.rados.gc_grace);
  app.add_option("--store", store_kind,
                 "where data lives: rocksdb (--data-dir, one server) or rados (a Ceph pool "
                 "several servers share)")
      ->envname("CKPT_STORE")
      ->check(CLI::IsMember({"rocksdb", "rados"}))
      ->capture_default_str();
  app.add_option("--rados-pool", options.store.rados.pool,
                 "RADOS pool of the metadata (must exist; replicated: it uses omap)")
      ->envname("CKPT_RADOS_POOL")
      ->capture_default_str();
  app.add_option("--rados-data-pool", options.store.rados.data_pool,
                 "RADOS pool of the chunks (must exist; may be erasure coded; empty: "
                 "--rados-pool). Every server of one store gives the same")
      ->envname("CKPT_RADOS_DATA_POOL");
  app.add_option("--rados-conf", options.store.rados.conf_file,
                 "ceph.conf of the cluster (empty: CEPH_CONF or /etc/ceph/ceph.conf)")
      ->envname("CKPT_RADOS_CONF");
  app.add_option("--rados-id", options.store.rados.user, "cephx user, without 'client.'")
      ->envname("CKPT_RADOS_ID")
      ->capture_default_str();
  app.add_option("--rados-keyring", options.store.rados.keyring,
                 "keyring of --rados-id (empty: what ceph.conf says)")
      ->envname("CKPT_RADOS_KEYRING");
  app.add_option("--rados-namespace-prefix", options.store.rados.namespace_prefix,
                 "prepended to the RADOS namespaces this deployment uses, so that several "
                 "independent deployments can share one pool (every server of one deployment "
                 "must give the same)")
      ->envname("CKPT_RADOS_NAMESPACE_PREFIX");
  app.add_option("--rados-timeout", rados_timeout_s,
                 "seconds a RADOS call may take before the RPC fails with UNAVAILABLE")
      ->envname("CKPT_RADOS_TIMEOUT")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--rados-upload-lease", rados_lease_s,
                 "seconds an upload's chunks stay safe from gc without news from its server")
      ->envname("CKPT_RADOS_UPLOAD_LEASE")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--rados-gc-grace", rados_grace_s,
                 "clock difference between servers gc allows for: chunks touched this recently "
                 "are kept")
      ->envname("CKPT_RADOS_GC_GRACE")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  // CLI11 reads an empty variable as an unset one; CKPT_METRICS_LISTEN=""
  // means "none", like the flag.
  if (const char* env = std::getenv("CKPT_METRICS_LISTEN");
      metrics_listen->count() == 0 && env != nullptr && *env == '\0') {
    options.metrics_listen.clear();
  }
  if (store_kind == "rados") options.store.backend = ckpt::storage::StoreBackend::kRados;
  options.store.rados.op_timeout = absl::Seconds(rados_timeout_s);
  options.store.rados.upload_lease = absl::Seconds(rados_lease_s);
  options.store.rados.gc_grace = absl::Seconds(rados_grace_s);

  uint64_t quota_bytes = 0;
  ParseSize(namespace_quota, &quota_bytes);
  options.store.namespace_quota_bytes = quota_bytes;
  for (const std::string& q : quotas) {
    std::pair<std::string, std::string> kv = absl::StrSplit(q, absl::MaxSplits('=', 1));
    uint64_t bytes = 0;
    if (kv.first.empty() || kv.first.find('/') != std::string::npos ||
        !ParseSize(kv.second, &bytes)) {
      std::fprintf(stderr,
                   "ckpt-server: --quota '%s': expected NAMESPACE=SIZE, e.g. team-a=50GiB\n",
                   q.c_str());
      return 2;
    }
    options.store.namespace_quotas[kv.first] = bytes;
  }
  options.log_level = *ckpt::server::ParseLogLevel(log_level);
  ckpt::server::LogGrpcAs(options.log_level);
  options.idle_timeout = absl::Seconds(idle_timeout_s);

  options.store.path = data_dir;
  options.store.reserved_disk_bytes = reserved_disk_mib << 20;
  options.store.sync_commits = !no_sync;
  options.store.rocksdb.max_background_jobs = background_jobs;
  ParseSize(block_cache, &options.store.rocksdb.metadata_block_cache_bytes);
  ParseSize(write_buffer, &options.store.rocksdb.write_buffer_bytes);
  ParseSize(manifest_write_buffer, &options.store.rocksdb.manifest_write_buffer_bytes);
  options.chunk_size = chunk_mib << 20;
  options.part_timeout = absl::Seconds(part_timeout_s);

  // Block the signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = ckpt::server::Server::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "ckpt-server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  if ((*server)->development_mode()) {
    std::fprintf(stderr,
                 "ckpt-server: ****************************************************************\n"
                 "ckpt-server: WARNING: DEVELOPMENT MODE: no --tokens-file, so there is NO ACCESS\n"
                 "ckpt-server: CONTROL: every client may read, write and delete every checkpoint.\n"
                 "ckpt-server: Give --tokens-file (CKPT_TOKENS_FILE) before exposing this server.\n"
                 "ckpt-server: ****************************************************************\n");
  } else if (options.tls_cert_file.empty()) {
    std::fprintf(stderr,
                 "ckpt-server: WARNING: access control without TLS: bearer tokens cross the "
                 "network in plaintext (use --tls-cert/--tls-key, or a TLS proxy)\n");
  }
  if ((*server)->http_port() != 0) {
    const std::string host = options.http_listen.substr(0, options.http_listen.rfind(':'));
    std::fprintf(stderr, "ckpt-server: web page on port %d (http://%s:%d/)\n",
                 (*server)->http_port(), host.c_str(), (*server)->http_port());
  }
  if ((*server)->metrics_port() != 0) {
    const std::string host = options.metrics_listen.substr(0, options.metrics_listen.rfind(':'));
    std::fprintf(stderr, "ckpt-server: metrics on port %d (http://%s:%d/metrics)\n",
                 (*server)->metrics_port(), host.c_str(), (*server)->metrics_port());
  }
  const bool tls = !options.tls_cert_file.empty();
  const std::string where =
      options.store.backend == ckpt::storage::StoreBackend::kRados
          ? absl::StrCat("RADOS pool ", options.store.rados.pool,
                         options.store.rados.data_pool.empty()
                             ? ""
                             : absl::StrCat(", chunks in ", options.store.rados.data_pool),
                         " (",
                         options.store.rados.conf_file.empty() ? "default ceph.conf"
                                                               : options.store.rados.conf_file,
                         ", user ", options.store.rados.user, ")")
          : data_dir;
  std::fprintf(stderr, "ckpt-server %s listening on port %d (%s, %s), data in %s\n", CKPT_VERSION,
               (*server)->port(), options.listen.c_str(), tls ? "TLS" : "plaintext", where.c_str());
  std::fprintf(stderr, "ckpt-server: access control %s\n",
               (*server)->development_mode()
                   ? "OFF (development mode)"
                   : absl::StrCat("on (tokens from ", options.tokens_file, ")").c_str());
  std::fprintf(stderr,
               "ckpt-server: try: ckpt --server localhost:%d%s%s stats    or    grpcurl %s "
               "localhost:%d list\n",
               (*server)->port(), tls ? " --tls" : "",
               (*server)->development_mode() ? "" : " --token-file FILE",
               tls ? "-insecure" : "-plaintext", (*server)->port());
  std::fflush(stderr);

  std::thread waiter([&] {
    int sig = 0;
    for (;;) {
      sigwait(&signals, &sig);
      if (sig != SIGHUP) break;
      absl::Status reloaded = (*server)->ReloadTokens();
      std::fprintf(stderr, "ckpt-server: SIGHUP: %s\n",
                   reloaded.ok() ? "tokens file reloaded"
                                 : absl::StrCat("tokens file not reloaded (the old tokens stay): ",
                                                reloaded.ToString())
                                       .c_str());
    }
    std::fprintf(stderr, "ckpt-server: signal %d, draining for up to %.0f s\n", sig, grace_s);
    (*server)->Shutdown(absl::Seconds(grace_s));
  });
  (*server)->Wait();
  // Wait() returns after Shutdown(); make the signal thread exit if it has not
  // run (e.g. the server stopped on its own).
  pthread_kill(waiter.native_handle(), SIGTERM);
  waiter.join();
  server->reset();
  std::fprintf(stderr, "ckpt-server: stopped\n");
  return 0;
}
