#ifndef CKPT_CLIENT_RAW_CLIENT_H_
#define CKPT_CLIENT_RAW_CLIENT_H_

// The ckpt client core: every RPC of ckpt.v1.CheckpointService over value
// trees whose tensor bytes are plain host memory. No LibTorch; the CLI, the
// benchmarks and the LibTorch client library are built on it.
//
//   auto client = RawClient::Connect("localhost:50051", {});
//   SaveInput input;  // tree + the bytes of each tensor node
//   auto saved = (*client)->Save("team/run/model", input, {});
//   auto loaded = (*client)->Load("team/run/model", {});

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/retention.h"
#include "common/slice.h"
#include "common/tensor_diff.h"
#include "common/types.h"

namespace ckpt::client {

/// Options of RawClient::Connect.
struct ClientOptions {
  /// How long Connect waits for the server to answer. Zero: Connect does not
  /// wait; the channel connects on the first call, which then reports an
  /// unreachable server (Unavailable) like any call. Default: 10 s.
  absl::Duration connect_timeout = absl::Seconds(10);
  /// Deadline of unary RPCs. Default: 60 s.
  absl::Duration rpc_timeout = absl::Seconds(60);
  /// Chunk size for saves; 0 uses the server's. Default: 0.
  uint32_t chunk_size = 0;
  /// Data bytes hashed and announced per node batch before the server says
  /// which chunks it needs: bounds the work done ahead. Default: 64 MiB.
  uint64_t batch_bytes = 64ull << 20;

  /// Bearer token sent with every call as `authorization: Bearer <token>`
  /// (servers with a tokens file require one). Empty: none. Default: "".
  std::string token;
  /// Connect with TLS. Default: false (plaintext).
  bool tls = false;
  /// PEM CA certificates that verify the server's certificate (TLS only).
  /// Empty: the system's roots. Default: "".
  std::string tls_ca_file;
  /// PEM client certificate chain and its key, for servers that require
  /// client certificates (mTLS); both or neither. Default: "".
  std::string tls_cert_file;
  std::string tls_key_file;
  /// Name to verify the server's certificate against instead of the host
  /// of the target (TLS only). Default: "".
  std::string tls_server_name;
};

/// Options of one unary call (every RawClient method but Save and Load, whose
/// SaveOptions and LoadOptions carry their own), like Arrow Flight's
/// FlightCallOptions.
struct CallOptions {
  /// Deadline of the whole call (all pages of a paged listing); zero:
  /// ClientOptions::rpc_timeout. DeadlineExceeded when it passes.
  /// Default: zero.
  absl::Duration timeout = absl::ZeroDuration();
  /// Extra gRPC metadata sent with the call (lower-case keys), e.g. a request
  /// id for proxies. Default: none.
  std::vector<std::pair<std::string, std::string>> headers;
};

/// Stops one call from another thread, like Arrow's StopSource: a save or
/// load given it (SaveOptions::stop, LoadOptions::stop) returns Cancelled
/// once Stop() is called, at once, even while it waits for the server (a
/// save stopped before its commit leaves no version; one whose commit was
/// done returns its result). Other calls of the client go on. Stop() before
/// the call starts makes it return Cancelled right away.
/// Thread-safe; must outlive the call it is given to.
class StopSource {
 public:
  /// Stops the call (idempotent).
  void Stop();
  /// Whether Stop() was called.
  bool stopped() const;

  /// For the client running the call: `cancel` runs on Stop() while it is
  /// set (at once if Stop() came first); Attach(nullptr) unsets it.
  void Attach(std::function<void()> cancel);

 private:
  mutable std::mutex mu_;
  bool stopped_ = false;
  std::function<void()> cancel_;
};

/// Per-save options.
struct SaveOptions {
  int64_t step = 0;
  int64_t epoch = 0;
  std::map<std::string, std::string> metadata;
  /// Tags to point at the new version ("latest" moves by itself).
  std::vector<std::string> tags;
  /// Multi-part save: this writer's rank, the number of parts and an id all
  /// ranks share. world_size <= 1: a single writer.
  uint32_t rank = 0;
  uint32_t world_size = 1;
  std::string save_id;
  /// Deadline of the whole save; zero: none. Default: none.
  absl::Duration timeout = absl::ZeroDuration();
  /// Compute each tensor's statistics (TensorStats: min, max, mean, std, L2
  /// norm, NaN and infinity counts) in the hashing pass and store them with
  /// the version (GetManifest, `ckpt show --stats`). A tensor node whose
  /// meta already carries stats keeps them. Default: true.
  bool tensor_stats = true;
  /// Refuse the version if any tensor holds NaN or infinities:
  /// FailedPrecondition naming the first tensors and their counts, nothing
  /// committed (the chunks sent become garbage for gc). Needs tensor_stats.
  /// Servers may refuse them for a prefix regardless
  /// (ckpt-server --reject-nonfinite). Default: false.
  bool reject_nonfinite = false;
  /// Lineage: "NAME@VERSION" this version was trained from (e.g. the
  /// version a resumed job loaded, or another run's for a warm start);
  /// empty: none. InvalidArgument unless a valid name and a version number.
  /// Default: "".
  std::string parent;
  /// Called from the saving thread after each node batch has been hashed and
  /// its missing chunks sent, with the data bytes done so far and the total
  /// (e.g. for a progress bar). Default: none.
  std::function<void(uint64_t done, uint64_t total)> progress;
  /// Stops this save from another thread (Cancelled, no version); null:
  /// none. Not owned. Default: null.
  StopSource* stop = nullptr;
};

/// A value tree to save. `tree` holds every node; for tensor and byte nodes
/// `data.size` must be set (chunk_size and chunks are filled by Save) and
/// `bytes[i]` gives node i's bytes (empty span for other nodes). The memory
/// must stay valid and unchanged during Save.
struct SaveInput {
  Tree tree;
  std::vector<absl::Span<const uint8_t>> bytes;
  /// Optional: node i's bytes come from sources[i] (when set) instead of
  /// bytes[i], read chunk by chunk as needed (e.g. GPU tensors through
  /// staging buffers): memory stays bounded by a few chunks. Empty or null
  /// entries use `bytes`.
  std::vector<class DataSource*> sources;
};

/// Pull source of one node's bytes for Save. Called from the saving thread.
class DataSource {
 public:
  virtual ~DataSource() = default;
  /// Fills `out` with bytes [offset, offset + out.size()) of the node. Save
  /// reads each chunk once to hash it and again to send it if the server
  /// lacks it, in increasing offsets within each pass.
  virtual absl::Status Read(uint64_t offset, absl::Span<uint8_t> out) = 0;
};

/// Outcome of a save.
struct SaveResult {
  VersionInfo version;
  /// Chunk bytes sent (chunks the server lacked).
  uint64_t bytes_sent = 0;
  /// Chunks of the tree, and how many of them were sent.
  uint64_t chunks_total = 0;
  uint64_t chunks_sent = 0;
  /// Versions the name's retention policy deleted once this one committed,
  /// oldest first (rank 0 of a multi-part save only).
  std::vector<uint64_t> pruned_versions;
};

/// Per-load options.
struct LoadOptions {
  /// Version number; 0 uses `tag` (empty: "latest").
  uint64_t version = 0;
  std::string tag;
  /// Glob patterns over flattened keys; empty selects everything.
  std::vector<std::string> patterns;
  /// Load the tree only.
  bool skip_data = false;
  /// Boxes of tensors to load instead of their whole data; each also
  /// selects its tensor (with no patterns, only sliced tensors are loaded).
  /// The tree keeps the stored tensors' meta, but a sliced tensor's data
  /// (LoadSink::OnData offsets, LoadedValue::data) is its box alone, packed
  /// row-major. InvalidArgument for an unknown or non-tensor key, a key
  /// given twice, or a box that does not fit the tensor. Default: none.
  std::vector<TensorSlice> slices;
  /// Deadline of the whole load; zero: none.
  absl::Duration timeout = absl::ZeroDuration();
  /// Stops this load from another thread (Cancelled); null: none. Not
  /// owned. Default: null.
  StopSource* stop = nullptr;
};

/// Receives a load as it streams. Calls come from the loading thread.
class LoadSink {
 public:
  virtual ~LoadSink() = default;
  /// The selected tree, before any data. An error aborts the load.
  virtual absl::Status OnTree(const VersionInfo& version, const Tree& tree) = 0;
  /// Where LoadOptions::slices landed, called right before OnTree when
  /// slices were asked for: nodes[s] is the index in that tree of the
  /// tensor of slice s. Default: ignored.
  virtual absl::Status OnSlices(absl::Span<const uint32_t> /*nodes*/) { return absl::OkStatus(); }
  /// A piece of node `node`'s data at `offset` (pieces arrive in node order,
  /// offsets increasing; every byte exactly once). An error aborts the load.
  virtual absl::Status OnData(size_t node, uint64_t offset, absl::string_view bytes) = 0;
  /// Whether OnData may get a piece in parts, as it lies in the transport's
  /// buffers (consecutive calls, offsets continuing), instead of whole: a
  /// sink that copies each call's bytes once says true and saves the copy
  /// that joins them. Asked after OnTree. Default: false.
  virtual bool AcceptsPartialPieces() const { return false; }
};

/// A loaded value with its data in memory.
struct LoadedValue {
  VersionInfo version;
  Tree tree;
  /// data[i]: the bytes of node i (empty for nodes without data; a sliced
  /// tensor's box, packed row-major).
  std::vector<std::string> data;
  /// For each of LoadOptions::slices, the index of its tensor in `tree`.
  std::vector<uint32_t> slice_nodes;
};

// ServerInfo and NamespaceUsage live in common/types.h (rpc/convert converts
// them); these are their names here.
using ::ckpt::NamespaceUsage;
using ::ckpt::ServerInfo;

/// A connection to a ckpt server. Thread-safe: calls may run concurrently,
/// and Close() may be called from any thread. Errors carry the server's gRPC
/// status code and message; every method may also return Unavailable (server
/// unreachable), DeadlineExceeded (its timeout passed), Unauthenticated or
/// PermissionDenied (token), Cancelled (Close() during the call) and
/// FailedPrecondition "client is closed" (after Close()).
class RawClient {
 public:
  /// Connects to `target` (HOST:PORT). Unavailable if the server does not
  /// answer within options.connect_timeout (with TLS also when the handshake
  /// fails: wrong CA, server name or client certificate). InvalidArgument or
  /// NotFound for unusable TLS settings or files.
  static absl::StatusOr<std::unique_ptr<RawClient>> Connect(const std::string& target,
                                                            const ClientOptions& options);
  /// Closes the connection (like Close()).
  virtual ~RawClient() = default;

  /// Cancels the calls in flight (they return Cancelled: a save cut off this
  /// way leaves no version) and makes every later call fail with
  /// FailedPrecondition "client is closed". Idempotent; thread-safe.
  virtual void Close() = 0;

  /// Saves `input` as the next version of `name`, sending only the chunks
  /// the server lacks. Returns once the version is durable (for a multi-part
  /// save: once every part is in and the version committed).
  virtual absl::StatusOr<SaveResult> Save(const std::string& name, const SaveInput& input,
                                          const SaveOptions& options) = 0;

  /// Streams a version into `sink`.
  virtual absl::Status Load(const std::string& name, const LoadOptions& options,
                            LoadSink* sink) = 0;
  /// Loads a version into memory.
  virtual absl::StatusOr<LoadedValue> Load(const std::string& name, const LoadOptions& options) = 0;

  /// All checkpoint names starting with `prefix`.
  virtual absl::StatusOr<std::vector<CheckpointSummary>> ListCheckpoints(
      const std::string& prefix, const CallOptions& call = {}) = 0;
  /// Versions of `name`, oldest first. NotFound if none.
  virtual absl::StatusOr<std::vector<VersionInfo>> ListVersions(const std::string& name,
                                                                const CallOptions& call = {}) = 0;
  /// The tree of a version (all pages).
  virtual absl::StatusOr<LoadedValue> GetManifest(const std::string& name, uint64_t version,
                                                  const std::string& tag,
                                                  const CallOptions& call = {}) = 0;
  /// Deletes a version; returns the chunks it released.
  virtual absl::StatusOr<uint64_t> DeleteVersion(const std::string& name, uint64_t version,
                                                 bool force, const CallOptions& call = {}) = 0;
  virtual absl::Status SetTag(const std::string& name, const std::string& tag, uint64_t version,
                              const CallOptions& call = {}) = 0;
  virtual absl::Status DeleteTag(const std::string& name, const std::string& tag,
                                 const CallOptions& call = {}) = 0;
  virtual absl::StatusOr<ServerInfo> GetServerInfo(const CallOptions& call = {}) = 0;
  /// The namespace of `name_or_prefix` ("team", "team/", "team/run-1/m":
  /// team), with the bytes it holds against its quota. Needs the read
  /// right on the whole namespace.
  virtual absl::StatusOr<NamespaceUsage> GetUsage(const std::string& name_or_prefix,
                                                  const CallOptions& call = {}) = 0;
  virtual absl::StatusOr<GcResult> GarbageCollect(const CallOptions& call = {}) = 0;
  /// Sets `name`'s retention policy (RetentionPolicy{} removes it); the
  /// server applies it after each save of `name`. Returns the versions it
  /// would delete now, oldest first. InvalidArgument for a bad policy
  /// (e.g. keep_best without a metric); needs the admin right on `name`.
  virtual absl::StatusOr<std::vector<uint64_t>> SetRetention(const std::string& name,
                                                             const RetentionPolicy& policy,
                                                             const CallOptions& call = {}) = 0;
  /// `name`'s retention policy (off if none is set).
  virtual absl::StatusOr<RetentionPolicy> GetRetention(const std::string& name,
                                                       const CallOptions& call = {}) = 0;
  /// Applies `name`'s retention policy now (with `dry_run`, only lists what
  /// it would delete). Returns the versions deleted, oldest first.
  virtual absl::StatusOr<std::vector<uint64_t>> Prune(const std::string& name, bool dry_run,
                                                      const CallOptions& call = {}) = 0;
  /// Has the server write a consistent copy of its whole store into
  /// `<its --backup-dir>/<name>` (empty `name`: "ckpt-backup-<UTC time>")
  /// while it keeps serving. Needs the admin right on "*";
  /// FailedPrecondition if the server has no --backup-dir, AlreadyExists if
  /// the backup exists, InvalidArgument for a bad name.
  virtual absl::StatusOr<BackupInfo> Backup(const std::string& name,
                                            const CallOptions& call = {}) = 0;
  /// Compares the tensors of version `a` of `name` with version `b` of
  /// `other_name` (empty: `name`), each a number or a tag (0 and "":
  /// latest): keys only in one, dtype/shape changes, identical tensors
  /// (counted, by their chunk digests: no bytes read) and, for changed
  /// ones, the relative L2 change and the largest absolute difference,
  /// computed by the server. At most `max_entries` entries (0: 1000; at most
  /// 10000), largest change first. NotFound for a missing version; needs
  /// the read right on both names.
  virtual absl::StatusOr<VersionDiff> Diff(const std::string& name, uint64_t version,
                                           const std::string& tag, const std::string& other_name,
                                           uint64_t other_version, const std::string& other_tag,
                                           uint32_t max_entries = 0,
                                           const CallOptions& call = {}) = 0;
  /// grpc.health.v1 Check of the whole server: OK when serving.
  virtual absl::Status Health(const CallOptions& call = {}) = 0;
};

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_RAW_CLIENT_H_
