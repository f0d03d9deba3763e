#include "client/raw_client.h"

#include <grpcpp/grpcpp.h>

#include <fstream>
#include <future>
#include <mutex>
#include <set>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "common/status_macros.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc/convert.h"
#include "rpc/grpc_status.h"
#include "rpc/pem.h"
#include "rpc/protocol.h"

namespace ckpt::client {
namespace {

using rpc::kMaxBatchNodes;
using rpc::kMaxResponseBytes;
using rpc::kPieceBytes;

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  if (timeout > absl::ZeroDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
}

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
        options_(options) {}

  void Close() override {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    for (grpc::ClientContext* context : in_flight_) context->TryCancel();
  }

  absl::StatusOr<SaveResult> Save(const std::string& name, const SaveInput& input,
                                  const SaveOptions& options) override {
    grpc::ClientContext context;
    Prepare(&context, options.timeout);
    InFlight in_flight(this, &context);
    CKPT_RETURN_IF_ERROR(in_flight.status());
    absl::StatusOr<SaveResult> result = RunSaveCall(context, name, input, options);
    if (result.ok()) return result;
    return in_flight.Outcome(result.status(), "the save");
  }

  // The Save stream on `context`, cancelled when it fails on our side.
  absl::StatusOr<SaveResult> RunSaveCall(grpc::ClientContext& context, const std::string& name,
                                         const SaveInput& input, const SaveOptions& options) {
    auto stream = stub_->Save(&context);
    bool broken = false;
    absl::StatusOr<SaveResult> result = RunSave(stream.get(), name, input, options, &broken);
    if (result.ok()) {
      stream->WritesDone();
      grpc::Status status = stream->Finish();
      if (!status.ok()) return rpc::FromGrpcStatus(status);
      return result;
    }
    // When the server ended the stream, its status says why; when we gave
    // up on our own, cancel first.
    if (!broken) context.TryCancel();
    grpc::Status status = stream->Finish();
    if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED) {
      return rpc::FromGrpcStatus(status);
    }
    return result.status();
  }

  absl::Status Load(const std::string& name, const LoadOptions& options, LoadSink* sink) override {
    grpc::ClientContext context;
    Prepare(&context, options.timeout);
    InFlight in_flight(this, &context);
    CKPT_RETURN_IF_ERROR(in_flight.status());
    return in_flight.Outcome(RunLoadCall(context, name, options, sink), "the load");
  }

  // The Load stream on `context`, cancelled when it fails on our side.
  absl::Status RunLoadCall(grpc::ClientContext& context, const std::string& name,
                           const LoadOptions& options, LoadSink* sink) {
    v1::LoadRequest request;
    request.set_name(name);
    request.set_version(options.version);
    request.set_tag(options.tag);
    for (const auto& p : options.patterns) request.add_patterns(p);
    request.set_skip_data(options.skip_data);
    for (const TensorSlice& slice : options.slices) {
      v1::TensorSlice* s = request.add_slices();
      s->set_key(slice.key);
      for (uint64_t a : slice.start) s->add_start(a);
      for (uint64_t n : slice.length) s->add_length(n);
    }
    auto stream = stub_->Load(&context, request);
    bool broken = false;
    absl::Status status = RunLoad(stream.get(), options.slices, sink, &broken);
    if (!status.ok() && !broken) context.TryCancel();
    grpc::Status finish = stream->Finish();
    if (!finish.ok() && (status.ok() || finish.error_code() != grpc::StatusCode::CANCELLED)) {
      return rpc::FromGrpcStatus(finish);
    }
    return status;
  }

  absl::StatusOr<LoadedValue> Load(const std::string& name, const LoadOptions& options) override {
    struct Collect : LoadSink {
      bool sliced = false;
      LoadedValue value;
      absl::Status OnTree(const VersionInfo& version, const Tree& tree) override {
        value.version = version;
        value.tree = tree;
        value.data.resize(tree.size());
        return absl::OkStatus();
      }
      absl::Status OnSlices(absl::Span<const uint32_t> nodes) override {
        value.slice_nodes.assign(nodes.begin(), nodes.end());
        return absl::OkStatus();
      }
      absl::Status OnData(size_t node, uint64_t offset, absl::string_view bytes) override {
        std::string& out = value.data[node];
        // A sliced tensor's data is its box, smaller than its size.
        if (!sliced && out.capacity() < value.tree[node].data.size) {
          out.reserve(value.tree[node].data.size);
        }
        out.append(bytes.data(), bytes.size());
        return absl::OkStatus();
      }
    } collect;
    collect.sliced = !options.slices.empty();
    CKPT_RETURN_IF_ERROR(Load(name, options, &collect));
    return std::move(collect.value);
  }

  absl::StatusOr<std::vector<CheckpointSummary>> ListCheckpoints(const std::string& prefix,
                                                                 const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    std::vector<CheckpointSummary> out;
    v1::ListCheckpointsRequest request;
    request.set_prefix(prefix);
    for (;;) {
      v1::ListCheckpointsResponse response;
      CKPT_RETURN_IF_ERROR(
          Unary(&v1::CheckpointService::Stub::ListCheckpoints, request, &response, call, deadline));
      for (const auto& c : response.checkpoints()) {
        CheckpointSummary s;
        s.name = c.name();
        s.latest_version = c.latest_version();
        s.num_versions = c.num_versions();
        s.latest_create_time_ms =
            c.latest_create_time().seconds() * 1000 + c.latest_create_time().nanos() / 1000000;
        out.push_back(std::move(s));
      }
      if (response.next_page_token().empty()) return out;
      request.set_page_token(response.next_page_token());
    }
  }

  absl::StatusOr<std::vector<VersionInfo>> ListVersions(const std::string& name,
                                                        const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::ListVersionsRequest request;
    request.set_name(name);
    std::vector<VersionInfo> out;
    do {  // Page by page: a name's versions may not fit one message.
      v1::ListVersionsResponse response;
      CKPT_RETURN_IF_ERROR(
          Unary(&v1::CheckpointService::Stub::ListVersions, request, &response, call, deadline));
      for (const auto& v : response.versions()) out.push_back(rpc::FromProto(v));
      request.set_page_token(response.next_page_token());
    } while (!request.page_token().empty());
    return out;
  }

  absl::StatusOr<LoadedValue> GetManifest(const std::string& name, uint64_t version,
                                          const std::string& tag,
                                          const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    LoadedValue out;
    v1::GetManifestRequest request;
    request.set_name(name);
    request.set_version(version);
    request.set_tag(tag);
    for (;;) {
      v1::GetManifestResponse response;
      CKPT_RETURN_IF_ERROR(
          Unary(&v1::CheckpointService::Stub::GetManifest, request, &response, call, deadline));
      out.version = rpc::FromProto(response.version());
      // Later pages must come from the same version even if `latest` moves.
      request.set_version(out.version.version);
      request.clear_tag();
      for (const auto& n : response.nodes()) {
        CKPT_ASSIGN_OR_RETURN(Node node, rpc::FromProto(n));
        out.tree.push_back(std::move(node));
      }
      if (response.next_page_token().empty()) break;
      request.set_page_token(response.next_page_token());
    }
    out.data.resize(out.tree.size());
    return out;
  }

  absl::StatusOr<uint64_t> DeleteVersion(const std::string& name, uint64_t version, bool force,
                                         const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::DeleteVersionRequest request;
    request.set_name(name);
    request.set_version(version);
    request.set_force(force);
    v1::DeleteVersionResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::DeleteVersion, request, &response, call, deadline));
    return response.released_chunks();
  }

  absl::Status SetTag(const std::string& name, const std::string& tag, uint64_t version,
                      const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::SetTagRequest request;
    request.set_name(name);
    request.set_tag(tag);
    request.set_version(version);
    v1::SetTagResponse response;
    return Unary(&v1::CheckpointService::Stub::SetTag, request, &response, call, deadline);
  }

  absl::Status DeleteTag(const std::string& name, const std::string& tag,
                         const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::DeleteTagRequest request;
    request.set_name(name);
    request.set_tag(tag);
    v1::DeleteTagResponse response;
    return Unary(&v1::CheckpointService::Stub::DeleteTag, request, &response, call, deadline);
  }

  absl::StatusOr<ServerInfo> GetServerInfo(const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::GetServerInfoRequest request;
    v1::GetServerInfoResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::GetServerInfo, request, &response, call, deadline));
    ServerInfo info;
    info.server_version = response.server_version();
    info.chunk_size = response.chunk_size();
    info.max_message_bytes = response.max_message_bytes();
    const auto& s = response.stats();
    info.stats.checkpoints = s.checkpoints();
    info.stats.versions = s.versions();
    info.stats.chunks = s.chunks();
    info.stats.stored_bytes = s.stored_bytes();
    info.stats.logical_bytes = s.logical_bytes();
    info.stats.disk_bytes = s.disk_bytes();
    info.stats.active_uploads = s.active_uploads();
    info.stats.garbage_bytes = s.garbage_bytes();
    info.dedup_ratio = s.dedup_ratio();
    return info;
  }

  absl::StatusOr<GcResult> GarbageCollect(const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::GarbageCollectRequest request;
    v1::GarbageCollectResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::GarbageCollect, request, &response, call, deadline));
    GcResult gc;
    gc.chunks_removed = response.chunks_removed();
    gc.bytes_removed = response.bytes_removed();
    gc.orphan_uploads_removed = response.orphan_uploads_removed();
    return gc;
  }

  absl::StatusOr<BackupInfo> Backup(const std::string& name, const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::BackupRequest request;
    request.set_name(name);
    v1::BackupResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::Backup, request, &response, call, deadline));
    BackupInfo backup;
    backup.name = response.name();
    backup.path = response.path();
    backup.files = response.files();
    backup.bytes = response.bytes();
    backup.versions = response.versions();
    return backup;
  }

  absl::StatusOr<NamespaceUsage> GetUsage(const std::string& name_or_prefix,
                                          const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::GetUsageRequest request;
    request.set_namespace_(name_or_prefix);
    v1::GetUsageResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::GetUsage, request, &response, call, deadline));
    NamespaceUsage usage;
    usage.ns = response.namespace_();
    usage.used_bytes = response.used_bytes();
    usage.quota_bytes = response.quota_bytes();
    return usage;
  }

  absl::StatusOr<std::vector<uint64_t>> SetRetention(const std::string& name,
                                                     const RetentionPolicy& policy,
                                                     const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::SetRetentionRequest request;
    request.set_name(name);
    rpc::ToProto(policy, request.mutable_policy());
    v1::SetRetentionResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::SetRetention, request, &response, call, deadline));
    return std::vector<uint64_t>(response.would_delete().begin(), response.would_delete().end());
  }

  absl::StatusOr<RetentionPolicy> GetRetention(const std::string& name,
                                               const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::GetRetentionRequest request;
    request.set_name(name);
    v1::GetRetentionResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::GetRetention, request, &response, call, deadline));
    return rpc::FromProto(response.policy());
  }

  absl::StatusOr<std::vector<uint64_t>> Prune(const std::string& name, bool dry_run,
                                              const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    v1::PruneRequest request;
    request.set_name(name);
    request.set_dry_run(dry_run);
    v1::PruneResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::Prune, request, &response, call, deadline));
    return std::vector<uint64_t>(response.deleted().begin(), response.deleted().end());
  }

  absl::Status Health(const CallOptions& call) override {
    const absl::Time deadline = Deadline(call);
    grpc::ClientContext context;
    Prepare(&context, absl::ZeroDuration());
    if (deadline != absl::InfiniteFuture()) context.set_deadline(absl::ToChronoTime(deadline));
    for (const auto& [key, value] : call.headers) context.AddMetadata(key, value);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError("the call's deadline passed before it started");
    }
    InFlight in_flight(this, &context);
    CKPT_RETURN_IF_ERROR(in_flight.status());
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    CKPT_RETURN_IF_ERROR(in_flight.Outcome(
        rpc::FromGrpcStatus(health_->Check(&context, request, &response)), "the call"));
    if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::UnavailableError(absl::StrCat(
          "server is not serving (health status ",
          grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()), ")"));
    }
    return absl::OkStatus();
  }

 private:
  // Every call carries the deadline and the bearer token.
  void Prepare(grpc::ClientContext* context, absl::Duration timeout) const {
    SetDeadline(context, timeout);
    if (!options_.token.empty()) {
      context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
    }
  }

  // When a unary method given `call` must be done.
  absl::Time Deadline(const CallOptions& call) const {
    const absl::Duration timeout =
        call.timeout > absl::ZeroDuration() ? call.timeout : options_.rpc_timeout;
    return timeout > absl::ZeroDuration() ? absl::Now() + timeout : absl::InfiniteFuture();
  }

  template <typename Method, typename Request, typename Response>
  absl::Status Unary(Method method, const Request& request, Response* response,
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
    return in_flight.Outcome(rpc::FromGrpcStatus(((*stub_).*method)(&context, request, response)),
                             "the call");
  }

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

  using SaveStream = grpc::ClientReaderWriter<v1::SaveRequest, v1::SaveResponse>;

  absl::Status Write(SaveStream* stream, const v1::SaveRequest& request, bool* broken) {
    if (!stream->Write(request)) {
      *broken = true;
      return absl::UnavailableError("save stream broken while writing");
    }
    return absl::OkStatus();
  }

  absl::Status Read(SaveStream* stream, v1::SaveResponse* response, v1::SaveResponse::MsgCase want,
                    bool* broken) {
    if (!stream->Read(response)) {
      *broken = true;
      return absl::UnavailableError("save stream ended unexpectedly");
    }
    if (response->msg_case() != want) {
      return absl::InternalError(absl::StrCat("unexpected save response ", response->msg_case()));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<SaveResult> RunSave(SaveStream* stream, const std::string& name,
                                     const SaveInput& input, const SaveOptions& options,
                                     bool* broken) {
    const Tree& tree = input.tree;
    if (tree.empty()) return absl::InvalidArgumentError("nothing to save: empty tree");
    if (input.bytes.size() != tree.size()) {
      return absl::InvalidArgumentError(absl::StrCat("SaveInput has ", tree.size(), " nodes but ",
                                                     input.bytes.size(), " byte spans"));
    }
    v1::SaveRequest request;
    v1::SaveBegin* begin = request.mutable_begin();
    begin->set_name(name);
    begin->set_step(options.step);
    begin->set_epoch(options.epoch);
    begin->mutable_metadata()->insert(options.metadata.begin(), options.metadata.end());
    for (const auto& t : options.tags) begin->add_tags(t);
    if (options.world_size > 1) {
      begin->mutable_part()->set_rank(options.rank);
      begin->mutable_part()->set_world_size(options.world_size);
      begin->mutable_part()->set_save_id(options.save_id);
    }
    CKPT_RETURN_IF_ERROR(Write(stream, request, broken));
    v1::SaveResponse response;
    CKPT_RETURN_IF_ERROR(Read(stream, &response, v1::SaveResponse::kAccepted, broken));
    uint32_t chunk_size = response.accepted().chunk_size();
    if (options_.chunk_size != 0) {
      chunk_size = std::min(options_.chunk_size, response.accepted().max_chunk_bytes());
    }
    if (chunk_size == 0) return absl::InternalError("server announced chunk size 0");

    SaveResult result;
    uint64_t data_done = 0, data_total = 0;
    for (const Node& n : tree) data_total += n.has_data() ? n.data.size : 0;
    // Batches are hashed one ahead on another thread, so that hashing (and
    // device-to-host copies) of batch k+1 overlap sending batch k's chunks.
    struct Batch {
      v1::SaveRequest request;
      absl::flat_hash_map<Digest, ChunkSource> sources;
      uint64_t data = 0;
      uint64_t chunks = 0;
      size_t next = 0;  // first node of the following batch
    };
    auto prepare = [&input, &tree, this, chunk_size](size_t next) -> absl::StatusOr<Batch> {
      Batch out;
      std::string scratch;  // one pulled chunk (DataSource nodes)
      v1::NodeBatch* batch = out.request.mutable_nodes();
      size_t batch_proto = 0;
      // Nodes up to batch_bytes of data (at least one node).
      while (next < tree.size() && batch->nodes_size() < static_cast<int>(kMaxBatchNodes) &&
             batch_proto < kPieceBytes &&
             (batch->nodes_size() == 0 || out.data < options_.batch_bytes)) {
        Node node = tree[next];
        if (node.has_data()) {
          DataSource* source = next < input.sources.size() ? input.sources[next] : nullptr;
          absl::Span<const uint8_t> bytes = input.bytes[next];
          if (source == nullptr && bytes.size() != node.data.size) {
            return absl::InvalidArgumentError(absl::StrCat(
                "node ", next, ": ", bytes.size(), " bytes given, ", node.data.size, " declared"));
          }
          node.data.chunk_size = node.data.size ? chunk_size : 0;
          node.data.chunks.clear();
          for (uint64_t off = 0; off < node.data.size; off += chunk_size) {
            const size_t len = std::min<uint64_t>(chunk_size, node.data.size - off);
            if (source != nullptr) {
              // Pulled chunk by chunk; read again when sent.
              scratch.resize(len);
              CKPT_RETURN_IF_ERROR(source->Read(
                  off, absl::Span<uint8_t>(reinterpret_cast<uint8_t*>(scratch.data()), len)));
              Digest d = Digest::Of(scratch);
              node.data.chunks.push_back(d);
              out.sources.emplace(d, ChunkSource{nullptr, len, source, off});
              continue;
            }
            Digest d = Digest::Of(bytes.subspan(off, len));
            node.data.chunks.push_back(d);
            out.sources.emplace(d, ChunkSource{bytes.data() + off, len});
          }
          out.chunks += node.data.chunks.size();
          out.data += node.data.size;
        }
        v1::Node* proto = batch->add_nodes();
        rpc::ToProto(node, proto);
        batch_proto += proto->ByteSizeLong() + 4;
        ++next;
      }
      out.next = next;
      return out;
    };
    uint64_t batch_index = 0;
    // A pending future's destructor waits for it: an early return below
    // never leaves the hashing thread using `input`.
    std::future<absl::StatusOr<Batch>> ahead = std::async(std::launch::async, prepare, size_t{0});
    for (;;) {
      absl::StatusOr<Batch> current = ahead.get();
      if (!current.ok()) return current.status();
      const bool more = current->next < tree.size();
      if (more) ahead = std::async(std::launch::async, prepare, current->next);
      CKPT_RETURN_IF_ERROR(Write(stream, current->request, broken));
      CKPT_RETURN_IF_ERROR(Read(stream, &response, v1::SaveResponse::kNeed, broken));
      if (response.need().batch() != batch_index++) {
        return absl::InternalError("server answered the wrong node batch");
      }
      CKPT_RETURN_IF_ERROR(SendChunks(stream, response.need(), current->sources, &result, broken));
      result.chunks_total += current->chunks;
      data_done += current->data;
      if (options.progress) options.progress(data_done, data_total);
      if (!more) break;
    }
    request.Clear();
    request.mutable_commit();
    CKPT_RETURN_IF_ERROR(Write(stream, request, broken));
    CKPT_RETURN_IF_ERROR(Read(stream, &response, v1::SaveResponse::kResult, broken));
    result.version = rpc::FromProto(response.result().version());
    result.pruned_versions.assign(response.result().pruned_versions().begin(),
                                  response.result().pruned_versions().end());
    return result;
  }

  absl::Status SendChunks(SaveStream* stream, const v1::NeedChunks& need,
                          const absl::flat_hash_map<Digest, ChunkSource>& sources,
                          SaveResult* result, bool* broken) {
    v1::SaveRequest request;
    v1::ChunkBatch* batch = request.mutable_chunks();
    size_t batch_bytes = 0;
    std::string scratch;  // one pulled chunk (DataSource nodes)
    auto flush = [&]() -> absl::Status {
      if (batch->pieces_size() == 0) return absl::OkStatus();
      CKPT_RETURN_IF_ERROR(Write(stream, request, broken));
      batch->Clear();
      batch_bytes = 0;
      return absl::OkStatus();
    };
    for (const std::string& raw : need.digests()) {
      CKPT_ASSIGN_OR_RETURN(Digest digest, Digest::FromBytes(raw));
      auto it = sources.find(digest);
      if (it == sources.end()) {
        return absl::InternalError(
            absl::StrCat("server asked for chunk ", digest.Hex(), " not in this batch"));
      }
      ChunkSource src = it->second;
      if (src.source != nullptr) {
        scratch.resize(src.length);
        CKPT_RETURN_IF_ERROR(src.source->Read(
            src.offset,
            absl::Span<uint8_t>(reinterpret_cast<uint8_t*>(scratch.data()), src.length)));
        src.data = reinterpret_cast<const uint8_t*>(scratch.data());
      }
      for (size_t off = 0; off < src.length;) {
        if (batch_bytes >= kPieceBytes) CKPT_RETURN_IF_ERROR(flush());
        const size_t len = std::min(src.length - off, kPieceBytes - batch_bytes);
        v1::ChunkPiece* piece = batch->add_pieces();
        piece->set_digest(raw);
        piece->set_offset(off);
        piece->set_data(src.data + off, len);
        batch_bytes += len;
        off += len;
      }
      result->bytes_sent += src.length;
      ++result->chunks_sent;
    }
    return flush();
  }

  absl::Status RunLoad(grpc::ClientReader<v1::LoadResponse>* stream,
                       const std::vector<TensorSlice>& slices, LoadSink* sink, bool* broken) {
    v1::LoadResponse response;
    auto read = [&](const char* where) -> absl::Status {
      if (stream->Read(&response)) return absl::OkStatus();
      *broken = true;
      return absl::UnavailableError(absl::StrCat("load stream ended ", where));
    };
    CKPT_RETURN_IF_ERROR(read("before the header"));
    if (!response.has_header()) return absl::InternalError("load stream without header");
    const VersionInfo version = rpc::FromProto(response.header().version());
    const uint64_t num_nodes = response.header().num_nodes();
    const uint64_t data_bytes = response.header().data_bytes();
    const std::vector<uint32_t> slice_nodes(response.header().slice_nodes().begin(),
                                            response.header().slice_nodes().end());
    Tree tree;
    while (tree.size() < num_nodes) {
      CKPT_RETURN_IF_ERROR(read("in the tree"));
      if (!response.has_nodes()) return absl::InternalError("expected nodes in load stream");
      for (const auto& n : response.nodes().nodes()) {
        CKPT_ASSIGN_OR_RETURN(Node node, rpc::FromProto(n));
        tree.push_back(std::move(node));
      }
    }
    CKPT_RETURN_IF_ERROR(ValidateTree(tree, UINT32_MAX));
    // Bytes each node's data has: its size, or its box's for a sliced one.
    std::vector<uint64_t> expect(tree.size());
    for (size_t i = 0; i < tree.size(); ++i) expect[i] = tree[i].data.size;
    if (slice_nodes.size() != slices.size()) {
      return absl::InternalError(absl::StrCat("load header places ", slice_nodes.size(),
                                              " slices, ", slices.size(), " were asked for"));
    }
    for (size_t s = 0; s < slices.size(); ++s) {
      const uint32_t i = slice_nodes[s];
      if (i >= tree.size() || tree[i].kind != NodeKind::kTensor) {
        return absl::InternalError("load header places a slice on a node that is not a tensor");
      }
      CKPT_ASSIGN_OR_RETURN(expect[i], SliceBytes(tree[i].tensor, slices[s]));
    }
    if (!slices.empty()) CKPT_RETURN_IF_ERROR(sink->OnSlices(slice_nodes));
    CKPT_RETURN_IF_ERROR(sink->OnTree(version, tree));
    // Pieces must arrive in order: node by node, offsets contiguous.
    size_t node = 0;
    uint64_t offset = 0;
    uint64_t received = 0;
    while (received < data_bytes) {
      CKPT_RETURN_IF_ERROR(read("in the data"));
      if (!response.has_data()) return absl::InternalError("expected data in load stream");
      for (const auto& piece : response.data().pieces()) {
        if (piece.node() != node) {
          if (piece.node() < node || piece.node() >= tree.size() || offset != expect[node]) {
            return absl::InternalError("load stream pieces out of order");
          }
          for (size_t skipped = node + 1; skipped < piece.node(); ++skipped) {
            if (expect[skipped] != 0) {
              return absl::InternalError("load stream skipped a node's data");
            }
          }
          node = piece.node();
          offset = 0;
        }
        if (piece.offset() != offset || piece.data().size() > expect[node] - offset) {
          return absl::InternalError("load stream piece out of range");
        }
        CKPT_RETURN_IF_ERROR(sink->OnData(node, offset, piece.data()));
        offset += piece.data().size();
        received += piece.data().size();
      }
    }
    return absl::OkStatus();
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CheckpointService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  ClientOptions options_;
  std::mutex mu_;
  bool closed_ = false;                       // guarded by mu_
  std::set<grpc::ClientContext*> in_flight_;  // guarded by mu_
};

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const ClientOptions& options) {
  const bool files = !options.tls_ca_file.empty() || !options.tls_cert_file.empty() ||
                     !options.tls_key_file.empty() || !options.tls_server_name.empty();
  if (!options.tls) {
    if (files) {
      return absl::InvalidArgumentError(
          "TLS settings (CA, client certificate, server name) given without TLS enabled");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its key, and a key its certificate");
  }
  grpc::SslCredentialsOptions ssl;
  if (!options.tls_ca_file.empty()) {
    CKPT_ASSIGN_OR_RETURN(ssl.pem_root_certs, rpc::ReadPem(options.tls_ca_file, "CA certificate"));
  }
  if (!options.tls_cert_file.empty()) {
    CKPT_ASSIGN_OR_RETURN(ssl.pem_cert_chain,
                          rpc::ReadPem(options.tls_cert_file, "client certificate"));
    CKPT_ASSIGN_OR_RETURN(ssl.pem_private_key, rpc::ReadPem(options.tls_key_file, "client key"));
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RawClient>> RawClient::Connect(const std::string& target,
                                                              const ClientOptions& options) {
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                        Credentials(options));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxResponseBytes);
  args.SetMaxSendMessageSize(4 << 20);
  if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  auto channel = grpc::CreateCustomChannel(target, credentials, args);
  if (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + options.connect_timeout))) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach ckpt server at ", target, " within ",
        absl::FormatDuration(options.connect_timeout),
        options.tls ? " (TLS: check the address, the CA, the server name and the client "
                      "certificate)"
                    : ""));
  }
  return std::unique_ptr<RawClient>(new GrpcRawClient(std::move(channel), options));
}

}  // namespace ckpt::client
