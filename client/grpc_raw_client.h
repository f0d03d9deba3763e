#ifndef CKPT_CLIENT_GRPC_RAW_CLIENT_H_
#define CKPT_CLIENT_GRPC_RAW_CLIENT_H_

// GrpcRawClient: RawClient over a gRPC channel. Internal to client/: its
// methods live in raw_client.cc (unary calls, credentials, Connect),
// raw_client_save.cc (the Save stream) and raw_client_load.cc (the Load
// stream).

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>

#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "client/raw_client.h"
#include "common/status_macros.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc/grpc_status.h"
#include "rpc/wire.h"

namespace ckpt::client {

// Where one chunk of the current batch lives in the caller's memory.
struct ChunkSource {
  const uint8_t* data;  // null: read from `source`
  size_t length;
  DataSource* source = nullptr;
  uint64_t offset = 0;  // within the node, for `source`
};

class GrpcRawClient final : public RawClient {
 public:
  GrpcRawClient(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options)
      : channel_(std::move(channel)),
        stub_(v1::CheckpointService::NewStub(channel_)),
        health_(grpc::health::v1::Health::NewStub(channel_)),
        save_method_(kSaveMethod, grpc::internal::RpcMethod::BIDI_STREAMING, channel_),
        load_method_(kLoadMethod, grpc::internal::RpcMethod::SERVER_STREAMING, channel_),
        options_(options) {}

  void Close() override;

  absl::StatusOr<SaveResult> Save(const std::string& name, const SaveInput& input,
                                  const SaveOptions& options) override;

  // The Save stream on `context`, cancelled when it fails on our side.
  absl::StatusOr<SaveResult> RunSaveCall(grpc::ClientContext& context, const std::string& name,
                                         const SaveInput& input, const SaveOptions& options);

  absl::Status Load(const std::string& name, const LoadOptions& options, LoadSink* sink) override;

  // The Load stream on `context`, cancelled when it fails on our side.
  absl::Status RunLoadCall(grpc::ClientContext& context, const std::string& name,
                           const LoadOptions& options, LoadSink* sink);

  absl::StatusOr<LoadedValue> Load(const std::string& name, const LoadOptions& options) override;

  absl::StatusOr<std::vector<CheckpointSummary>> ListCheckpoints(const std::string& prefix,
                                                                 const CallOptions& call) override;

  absl::StatusOr<std::vector<VersionInfo>> ListVersions(const std::string& name,
                                                        const CallOptions& call) override;

  absl::StatusOr<LoadedValue> GetManifest(const std::string& name, uint64_t version,
                                          const std::string& tag, const CallOptions& call) override;

  absl::StatusOr<uint64_t> DeleteVersion(const std::string& name, uint64_t version, bool force,
                                         const CallOptions& call) override;

  absl::Status SetTag(const std::string& name, const std::string& tag, uint64_t version,
                      const CallOptions& call) override;

  absl::Status DeleteTag(const std::string& name, const std::string& tag,
                         const CallOptions& call) override;

  absl::StatusOr<ServerInfo> GetServerInfo(const CallOptions& call) override;

  absl::StatusOr<GcResult> GarbageCollect(const CallOptions& call) override;

  absl::StatusOr<BackupInfo> Backup(const std::string& name, const CallOptions& call) override;
  absl::StatusOr<VersionDiff> Diff(const std::string& name, uint64_t version,
                                   const std::string& tag, const std::string& other_name,
                                   uint64_t other_version, const std::string& other_tag,
                                   uint32_t max_entries, const CallOptions& call) override;

  absl::StatusOr<NamespaceUsage> GetUsage(const std::string& name_or_prefix,
                                          const CallOptions& call) override;

  absl::StatusOr<std::vector<uint64_t>> SetRetention(const std::string& name,
                                                     const RetentionPolicy& policy,
                                                     const CallOptions& call) override;

  absl::StatusOr<RetentionPolicy> GetRetention(const std::string& name,
                                               const CallOptions& call) override;

  absl::StatusOr<std::vector<uint64_t>> Prune(const std::string& name, bool dry_run,
                                              const CallOptions& call) override;

  absl::Status Health(const CallOptions& call) override;

 private:
  // Every call carries the deadline and the bearer token.
  void Prepare(grpc::ClientContext* context, absl::Duration timeout) const;

  // When a unary method given `call` must be done.
  absl::Time Deadline(const CallOptions& call) const;

  // One unary call of the checkpoint service.
  template <typename Method, typename Request, typename Response>
  absl::Status Unary(Method method, const Request& request, Response* response,
                     const CallOptions& call, absl::Time deadline) {
    return Call(*stub_, method, request, response, call, deadline);
  }

  // One unary call of `stub` (the checkpoint service's or health's): the
  // deadline and headers of `call`, counted in flight so that Close()
  // cancels it.
  template <typename Stub, typename Method, typename Request, typename Response>
  absl::Status Call(Stub& stub, Method method, const Request& request, Response* response,
                    const CallOptions& call, absl::Time deadline) {
    grpc::ClientContext context;
    Prepare(&context, absl::ZeroDuration());
    if (deadline != absl::InfiniteFuture()) context.set_deadline(absl::ToChronoTime(deadline));
    for (const auto& [key, value] : call.headers) context.AddMetadata(key, value);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError("the call's deadline passed before it started");
    }
    InFlight in_flight(this, &context);
    CKPT_RETURN_IF_ERROR(in_flight.status());
    return in_flight.Outcome(rpc::FromGrpcStatus((stub.*method)(&context, request, response)),
                             "the call");
  }

  // Points a StopSource (none: nothing) at a call's context while the call
  // runs: Stop() cancels it. Detached on every way out of the scope.
  class StopAttachment {
   public:
    StopAttachment(StopSource* stop, grpc::ClientContext* context) : stop_(stop) {
      if (stop_ != nullptr) stop_->Attach([context] { context->TryCancel(); });
    }
    ~StopAttachment() {
      if (stop_ != nullptr) stop_->Attach(nullptr);
    }
    StopAttachment(const StopAttachment&) = delete;
    StopAttachment& operator=(const StopAttachment&) = delete;
    // Whether the call was stopped.
    bool stopped() const { return stop_ != nullptr && stop_->stopped(); }

   private:
    StopSource* stop_;
  };

  // Registers a call's context while it runs, so that Close() can cancel it.
  class InFlight {
   public:
    InFlight(GrpcRawClient* client, grpc::ClientContext* context)
        : client_(client), context_(context) {
      std::lock_guard<std::mutex> lock(client_->mu_);
      if (client_->closed_) {
        status_ = absl::FailedPreconditionError("client is closed");
        context_ = nullptr;
        return;
      }
      client_->in_flight_.insert(context_);
    }
    ~InFlight() {
      if (context_ == nullptr) return;
      std::lock_guard<std::mutex> lock(client_->mu_);
      client_->in_flight_.erase(context_);
    }
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;
    const absl::Status& status() const { return status_; }
    // `failed` unless Close() ran meanwhile: then Cancelled, whatever gRPC
    // made of the cancellation (a broken stream, CANCELLED).
    absl::Status Outcome(absl::Status failed, absl::string_view what) const {
      if (failed.ok()) return failed;
      std::lock_guard<std::mutex> lock(client_->mu_);
      if (!client_->closed_) return failed;
      return absl::CancelledError(absl::StrCat(what, " was cancelled: the client was closed"));
    }

   private:
    GrpcRawClient* client_;
    grpc::ClientContext* context_;
    absl::Status status_;
  };

  // Save is called raw: its chunk messages are encoded by
  // rpc::EncodeChunkBatch (one copy of the tensors' bytes, not a protobuf
  // message's two).
  static constexpr char kSaveMethod[] = "/ckpt.v1.CheckpointService/Save";
  using SaveStream = grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>;

  absl::Status Write(SaveStream* stream, const v1::SaveRequest& request, bool* broken);
  absl::Status Write(SaveStream* stream, const grpc::ByteBuffer& message, bool* broken);

  absl::Status Read(SaveStream* stream, v1::SaveResponse* response, v1::SaveResponse::MsgCase want,
                    bool* broken);

  absl::StatusOr<SaveResult> RunSave(SaveStream* stream, const std::string& name,
                                     const SaveInput& input, const SaveOptions& options,
                                     bool* broken);

  absl::Status SendChunks(SaveStream* stream, const v1::NeedChunks& need,
                          const absl::flat_hash_map<Digest, ChunkSource>& sources,
                          bool whole_chunks, SaveResult* result, bool* broken);

  // Load is called raw too: the data pieces go from gRPC's buffers
  // straight to the sink (rpc::DecodeDataBatch), not through a protobuf
  // message's copy.
  static constexpr char kLoadMethod[] = "/ckpt.v1.CheckpointService/Load";
  using LoadStream = grpc::ClientReader<grpc::ByteBuffer>;

  absl::Status RunLoad(LoadStream* stream, const std::vector<TensorSlice>& slices, LoadSink* sink,
                       bool* broken);

  // The statistics of the tensors of the last saves, by checkpoint name and
  // node index (RunSave): a tensor whose chunks all hash as they did keeps
  // them. The kStatsCacheNames names saved last, newest first.
  struct CachedStats {
    DType dtype;
    uint64_t size = 0;
    uint32_t chunk_size = 0;
    std::vector<Digest> chunks;
    TensorStats stats;
  };
  using StatsByNode = absl::flat_hash_map<size_t, CachedStats>;
  static constexpr size_t kStatsCacheNames = 8;
  // Removes and returns `name`'s entry (empty if none).
  StatsByNode TakeStats(const std::string& name);
  // Makes `stats` `name`'s entry.
  void KeepStats(const std::string& name, StatsByNode stats);

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CheckpointService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  const grpc::internal::RpcMethod save_method_;
  const grpc::internal::RpcMethod load_method_;
  ClientOptions options_;
  std::mutex mu_;
  bool closed_ = false;                       // guarded by mu_
  std::set<grpc::ClientContext*> in_flight_;  // guarded by mu_
  std::mutex stats_mu_;
  std::list<std::pair<std::string, StatsByNode>> stats_cache_;  // guarded by stats_mu_
};

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_GRPC_RAW_CLIENT_H_
