// ckpt-server: flags (each with an environment variable) -> Start -> Wait.
// SIGTERM and SIGINT drain in-flight RPCs for --shutdown-grace, then cancel
// the rest: a save that has not committed leaves nothing visible.

#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/server.h"

int main(int argc, char** argv) {
  ckpt::server::ServerOptions options;
  std::string data_dir = "./ckpt-data";
  uint32_t chunk_mib = 4;
  std::string write_mode = "ingest";
  double part_timeout_s = 600;
  double grace_s = 30;
  bool no_sync = false;

  CLI::App app{"ckpt-server: a gRPC checkpoint store for PyTorch training"};
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
                 "largest gRPC message accepted or sent")
      ->envname("CKPT_MAX_MESSAGE_BYTES")
      ->capture_default_str();
  app.add_option("--max-tree-nodes", options.max_tree_nodes, "most nodes in one checkpoint")
      ->envname("CKPT_MAX_TREE_NODES")
      ->capture_default_str();
  app.add_option("--max-tree-bytes", options.max_tree_bytes,
                 "most encoded tree bytes in one save")
      ->envname("CKPT_MAX_TREE_BYTES")
      ->capture_default_str();
  app.add_option("--part-timeout", part_timeout_s,
                 "seconds a multi-part save waits for all its parts")
      ->envname("CKPT_PART_TIMEOUT")
      ->capture_default_str();
  app.add_option("--worker-threads", options.worker_threads, "threads for storage work")
      ->envname("CKPT_WORKER_THREADS")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--chunk-write", write_mode,
                 "how chunk bytes are written: ingest (SST files, written once) or wal")
      ->envname("CKPT_CHUNK_WRITE")
      ->check(CLI::IsMember({"ingest", "wal"}))
      ->capture_default_str();
  app.add_flag("--no-sync", no_sync,
               "do not fsync commits (benchmarks only: a crash may lose versions)")
      ->envname("CKPT_NO_SYNC");
  app.add_option("--shutdown-grace", grace_s,
                 "seconds in-flight RPCs may run after SIGTERM before being cancelled")
      ->envname("CKPT_SHUTDOWN_GRACE")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  options.store.path = data_dir;
  options.store.chunk_write_mode = write_mode == "wal" ? ckpt::storage::ChunkWriteMode::kWal
                                                       : ckpt::storage::ChunkWriteMode::kIngest;
  options.store.sync_commits = !no_sync;
  options.chunk_size = chunk_mib << 20;
  options.part_timeout = absl::Seconds(part_timeout_s);

  // Block the signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = ckpt::server::Server::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "ckpt-server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "ckpt-server %s listening on port %d, data in %s\n", CKPT_VERSION,
               (*server)->port(), data_dir.c_str());
  std::fflush(stderr);

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
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
