// Save: the bidirectional stream that receives a checkpoint's tree and the
// chunks the store lacks, then commits it (alone, or as one part of a
// multi-part save through PendingSaves).

#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/crash_point.h"
#include "common/names.h"
#include "common/retention.h"
#include "common/status_macros.h"
#include "common/tensor_stats.h"
#include "rpc/convert.h"
#include "rpc/wire.h"
#include "server/pending_saves.h"
#include "server/service_internal.h"

namespace ckpt::server {
namespace {

class SaveReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                          public SaveWaiter,
                          public RefCounted,
                          public IdleWatched {
 public:
  SaveReactor(CheckpointService* service, grpc::CallbackServerContext* context)
      : service_(service),
        context_(context),
        counted_(service->Enter()),
        record_(&service->telemetry(), "Save", context->peer()),
        memory_(&service->tree_memory()) {
    if (!counted_) {
      FinishOnce(absl::UnavailableError("server shutting down"));
      return;
    }
    // Unauthenticated before anything is read; the right is checked on
    // SaveBegin, which names the checkpoint.
    auto principal = service->Authenticate(*context);
    if (!principal.ok()) {
      FinishOnce(principal.status());
      return;
    }
    principal_ = *std::move(principal);
    record_.set_principal(principal_->name());
    stream_counted_ = service->EnterStream("Save");
    if (!stream_counted_) {
      FinishOnce(service->TooManyStreams());
      return;
    }
    service->watchdog().Add(this);
    StartWaiting();
    StartRead(&raw_request_);
  }
  ~SaveReactor() override {
    PartNoLongerWaiting();
    upload_.reset();  // discards what an uncommitted save wrote
    if (stream_counted_) service_->LeaveStream("Save");
    if (counted_) service_->Leave();
  }

  void OnReadDone(bool ok) override {
    StopWaiting();
    Ref();
    service_->executor().Post([this, ok] {
      if (ok) {
        HandleRequest();
      } else {
        HandleEndOfStream();
      }
      Unref();
    });
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) queue_.clear();  // the client is gone; only Finish remains
    PumpLocked();
  }

  void OnCancel() override {
    cancelled_.store(true);
    if (waiting_.load()) service_->pending().CancelPart(this);
    PartNoLongerWaiting();
    FinishOnce(absl::CancelledError("save cancelled; nothing was saved"));
  }

  void OnDone() override {
    service_->watchdog().Remove(this);
    Unref();
  }

  // IdleWatched: the client sent nothing for --idle-timeout.
  void OnIdle(absl::Duration waited) override {
    bool write_stuck;
    {
      std::lock_guard<std::mutex> lock(mu_);
      write_stuck = writing_;
    }
    FinishOnce(absl::DeadlineExceededError(absl::StrCat(
        "save stream idle: no message from the client for ",
        absl::FormatDuration(absl::Trunc(waited, absl::Milliseconds(1))), " (--idle-timeout ",
        absl::FormatDuration(service_->options().idle_timeout), "); nothing was saved")));
    // A client that reads nothing either: its pending write would hold the
    // Finish back forever.
    if (write_stuck) context_->TryCancel();
  }

  // SaveWaiter
  void Deliver(const absl::StatusOr<VersionInfo>& result) override {
    PartNoLongerWaiting();
    if (result.ok()) {
      record_.set_version(result->version);
      std::vector<uint64_t> pruned;
      if (begin_.part().rank() == 0) {
        service_->telemetry().AddSavedLogical(result->data_bytes);
        pruned = ApplyRetention(result->name);
      }
      v1::SaveResponse response;
      rpc::ToProto(*result, response.mutable_result()->mutable_version());
      response.mutable_result()->set_bytes_received(bytes_received_);
      response.mutable_result()->mutable_pruned_versions()->Add(pruned.begin(), pruned.end());
      Send(std::move(response));
      FinishOnce(absl::OkStatus());
    } else {
      FinishOnce(result.status());
    }
  }
  void Ref() override { RefCounted::Ref(); }
  void Unref() override { RefCounted::Unref(); }

 private:
  // Which part of which multi-part save this stream carries (under mu_: any
  // thread may end the stream).
  struct PartOf {
    std::string name;
    std::string save_id;
    uint64_t begun;
    uint32_t rank;
    uint32_t world_size;
  };

  void HandleRequest() {
    if (finish_requested()) return;
    absl::Status status = Dispatch();
    if (!status.ok()) {
      FinishOnce(status);
      return;
    }
    // Under mu_: once Finish is requested (e.g. by OnCancel on another
    // thread) the call may be gone, so no new read may start.
    std::lock_guard<std::mutex> lock(mu_);
    if (!done_reading_ && !finish_requested_) {
      StartWaiting();
      StartRead(&raw_request_);
    }
  }

  // Applies the name's retention policy, if it has one, before the client
  // hears "committed": once Save returns, the old versions are gone. A
  // failure here does not undo the save; it is logged. Returns what it deleted.
  std::vector<uint64_t> ApplyRetention(const std::string& name) {
    const Logger& logger = service_->telemetry().logger();
    auto policy = service_->store()->GetRetention(name);
    if (policy.ok() && !policy->enabled()) return {};
    absl::StatusOr<std::vector<uint64_t>> pruned =
        policy.ok() ? service_->store()->Prune(name, /*dry_run=*/false) : policy.status();
    if (!pruned.ok()) {
      logger.Log(LogLevel::kWarn, "retention",
                 {{"checkpoint", name}, {"error", std::string(pruned.status().message())}});
      return {};
    }
    if (!pruned->empty()) {
      logger.Log(LogLevel::kInfo, "retention",
                 {{"checkpoint", name},
                  {"deleted_versions", absl::StrJoin(*pruned, ",")},
                  {"policy", DescribeRetentionPolicy(*policy)}});
    }
    return *std::move(pruned);
  }

  void HandleEndOfStream() {
    if (finish_requested()) return;
    FinishOnce(absl::AbortedError(cancelled_.load()
                                      ? "save cancelled; nothing was saved"
                                      : "save stream ended before SaveCommit; nothing was saved"));
  }

  absl::Status Dispatch() {
    CKPT_RETURN_IF_ERROR(rpc::FromByteBuffer(raw_request_, &request_, "SaveRequest"));
    raw_request_.Clear();
    switch (request_.msg_case()) {
      case v1::SaveRequest::kBegin:
        return OnBegin(request_.begin());
      case v1::SaveRequest::kNodes:
        return OnNodes(request_.nodes());
      case v1::SaveRequest::kChunks:
        return OnChunks(request_.mutable_chunks());
      case v1::SaveRequest::kCommit:
        return OnCommit();
      case v1::SaveRequest::MSG_NOT_SET:
        break;
    }
    return absl::InvalidArgumentError("empty SaveRequest");
  }

  absl::Status OnBegin(const v1::SaveBegin& begin) {
    if (upload_) return absl::FailedPreconditionError("SaveBegin sent twice");
    CKPT_RETURN_IF_ERROR(ValidateName(begin.name()));
    record_.set_checkpoint(begin.name());
    CKPT_RETURN_IF_ERROR(principal_->Check(Right::kWrite, begin.name()));
    for (const std::string& tag : begin.tags()) CKPT_RETURN_IF_ERROR(ValidateUserTag(tag));
    if (!begin.parent().empty()) CKPT_RETURN_IF_ERROR(ValidateParent(begin.parent()));
    CKPT_RETURN_IF_ERROR(ValidateMetadata(
        std::map<std::string, std::string>(begin.metadata().begin(), begin.metadata().end())));
    const v1::PartInfo& part = begin.part();
    if (part.world_size() > 1) {
      if (part.rank() >= part.world_size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("rank ", part.rank(), " not in [0, world_size ", part.world_size(), ")"));
      }
      if (part.save_id().empty() || part.save_id().size() > 256) {
        return absl::InvalidArgumentError("a multi-part save needs a save_id of 1 to 256 bytes");
      }
      if (part.world_size() > 65536) {
        return absl::InvalidArgumentError("world_size above 65536");
      }
    } else if (part.rank() != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("rank ", part.rank(), " given without world_size"));
    }
    if (part.world_size() > 1) {
      const uint64_t begun = service_->pending().Sequence();
      std::lock_guard<std::mutex> lock(mu_);
      part_of_ = PartOf{begin.name(), part.save_id(), begun, part.rank(), part.world_size()};
    }
    CKPT_ASSIGN_OR_RETURN(upload_, service_->store()->BeginUpload(begin.name()));
    begin_ = begin;
    CKPT_CRASH_POINT("save.begin");
    v1::SaveResponse response;
    v1::SaveAccepted* accepted = response.mutable_accepted();
    accepted->set_chunk_size(service_->options().chunk_size);
    accepted->set_max_chunk_bytes(service_->options().store.max_chunk_bytes);
    accepted->set_max_message_bytes(service_->options().max_message_bytes);
    Send(std::move(response));
    return absl::OkStatus();
  }

  absl::Status OnNodes(const v1::NodeBatch& batch) {
    if (!upload_) return absl::FailedPreconditionError("SaveBegin must come first");
    const ServerOptions& options = service_->options();
    tree_bytes_ += batch.ByteSizeLong();
    if (tree_bytes_ > options.max_tree_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("tree exceeds ", options.max_tree_bytes, " bytes (--max-tree-bytes)"));
    }
    if (tree_.size() + batch.nodes_size() > options.max_tree_nodes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("tree exceeds ", options.max_tree_nodes, " nodes (--max-tree-nodes)"));
    }
    std::vector<Digest> fresh;
    uint64_t memory = 0;
    for (const v1::Node& proto : batch.nodes()) {
      const size_t index = tree_.size();
      if (const std::string& key = proto.str_key(); key.size() > kMaxKeyLength) {
        return absl::InvalidArgumentError(absl::StrCat("node ", index, ": key '", Excerpt(key),
                                                       "' is ", key.size(), " bytes (max ",
                                                       kMaxKeyLength, ")"));
      }
      auto node = rpc::FromProto(proto);
      if (!node.ok()) return Annotate(node.status(), absl::StrCat("node ", index));
      memory += NodeMemory(*node);
      if (node->has_data()) {
        std::string label = absl::StrCat("node ", index);
        if (auto* s = std::get_if<std::string>(&node->key)) label = *s;
        CKPT_RETURN_IF_ERROR(ValidateNodeData(*node, label, options.store.max_chunk_bytes));
        for (size_t i = 0; i < node->data.chunks.size(); ++i) {
          const Digest& d = node->data.chunks[i];
          const uint64_t length = node->data.ChunkLength(i);
          auto [it, inserted] = chunk_length_.emplace(d, length);
          if (inserted) {
            fresh.push_back(d);
          } else if (it->second != length) {
            return absl::InvalidArgumentError(absl::StrCat(
                "chunk ", Hex(d), " declared with lengths ", it->second, " and ", length));
          }
        }
      }
      tree_.push_back(*std::move(node));
    }
    if (!memory_.Grow(memory)) {
      const MemoryBudget& budget = service_->tree_memory();
      const uint64_t wanted = memory_.bytes() + memory;
      if (wanted > budget.limit()) {
        // Alone past the limit: waiting would not help.
        return absl::ResourceExhaustedError(absl::StrCat(
            "this save's tree needs ", wanted,
            " bytes of server memory, more than all saves "
            "in flight may hold (--max-tree-memory ",
            budget.limit(), "); nothing was saved (save fewer nodes, or raise --max-tree-memory)"));
      }
      return absl::ResourceExhaustedError(absl::StrCat(
          "server busy: checkpoint trees in flight hold ", budget.used(),
          " bytes of memory and this save's would take ", wanted, " (--max-tree-memory ",
          budget.limit(), "); nothing was saved, retry later"));
    }
    CKPT_ASSIGN_OR_RETURN(std::vector<bool> missing, upload_->FindMissing(fresh));
    for (size_t i = 0; i < fresh.size(); ++i) {
      if (missing[i]) new_bytes_ += chunk_length_.at(fresh[i]);
    }
    CKPT_RETURN_IF_ERROR(CheckQuota());
    v1::SaveResponse response;
    v1::NeedChunks* need = response.mutable_need();
    need->set_batch(batches_++);
    for (size_t i = 0; i < fresh.size(); ++i) {
      if (!missing[i]) continue;
      needed_.insert(fresh[i]);
      need->add_digests(std::string(fresh[i].view()));
    }
    Send(std::move(response));
    return absl::OkStatus();
  }

  // Takes the pieces' bytes: the upload may keep them.
  absl::Status OnChunks(v1::ChunkBatch* batch) {
    if (!upload_) return absl::FailedPreconditionError("SaveBegin must come first");
    for (v1::ChunkPiece& piece : *batch->mutable_pieces()) {
      record_.AddBytesIn(piece.data().size());
      CKPT_ASSIGN_OR_RETURN(Digest digest, Digest::FromBytes(piece.digest()));
      if (assembling_ && digest != current_) {
        return absl::InvalidArgumentError(
            absl::StrCat("chunk ", Hex(current_), " incomplete (", buffer_.size(), " of ",
                         current_length_, " bytes) when chunk ", Hex(digest), " began"));
      }
      if (!assembling_) {
        if (needed_.count(digest) == 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("chunk ", Hex(digest), " was not requested or was already received"));
        }
        assembling_ = true;
        current_ = digest;
        current_length_ = chunk_length_.at(digest);
        buffer_.clear();
      }
      const std::string& data = piece.data();
      if (piece.offset() != buffer_.size()) {
        return absl::InvalidArgumentError(absl::StrCat("chunk ", Hex(digest), ": piece at offset ",
                                                       piece.offset(), ", expected ",
                                                       buffer_.size()));
      }
      if (data.size() > current_length_ - buffer_.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("chunk ", Hex(digest), ": ", buffer_.size() + data.size(),
                         " bytes sent, beyond the ", current_length_, " declared"));
      }
      const uint64_t length = current_length_;
      if (buffer_.empty() && data.size() == current_length_) {
        // The whole chunk in one piece: handed over, no copy.
        CKPT_RETURN_IF_ERROR(upload_->PutChunk(digest, std::move(*piece.mutable_data())));
      } else {
        // Sized once (the declared length, checked against max_chunk_bytes):
        // the buffer is handed over with the chunk, so it never grows twice.
        if (buffer_.empty()) buffer_.reserve(current_length_);
        buffer_.append(data);
        if (buffer_.size() < current_length_) continue;
        CKPT_RETURN_IF_ERROR(upload_->PutChunk(digest, std::move(buffer_)));
        service_->telemetry().AddAssembledChunk();
      }
      CKPT_CRASH_POINT("save.chunk");
      bytes_received_ += length;
      needed_.erase(digest);
      assembling_ = false;
      buffer_.clear();
    }
    return absl::OkStatus();
  }

  absl::Status OnCommit() {
    if (!upload_) return absl::FailedPreconditionError("SaveBegin must come first");
    if (assembling_) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", Hex(current_), " incomplete (",
                                                     buffer_.size(), " of ", current_length_,
                                                     " bytes) at SaveCommit"));
    }
    if (!needed_.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          needed_.size(), " requested chunks were never sent (e.g. ", Hex(*needed_.begin()), ")"));
    }
    const uint32_t max_chunk = service_->options().store.max_chunk_bytes;
    CKPT_RETURN_IF_ERROR(ValidateTree(tree_, max_chunk));
    CKPT_RETURN_IF_ERROR(GuardNonfinite());
    done_reading_ = true;
    const v1::PartInfo& part = begin_.part();
    if (part.world_size() <= 1) {
      storage::CommitSpec spec;
      FillSpec(&spec);
      spec.tree = std::move(tree_);
      storage::Upload* uploads[] = {upload_.get()};
      Deliver(service_->store()->Commit(std::move(spec), uploads));
      return absl::OkStatus();
    }
    if (tree_[0].kind != NodeKind::kDict) {
      return absl::InvalidArgumentError(
          "each part of a multi-part save must be a dict at its root");
    }
    CKPT_RETURN_IF_ERROR(upload_->Seal());
    SavePart save_part;
    save_part.content.rank = part.rank();
    save_part.content.tree = std::move(tree_);
    save_part.content.step = begin_.step();
    save_part.content.epoch = begin_.epoch();
    save_part.content.metadata.insert(begin_.metadata().begin(), begin_.metadata().end());
    save_part.content.tags.assign(begin_.tags().begin(), begin_.tags().end());
    save_part.content.parent = begin_.parent();
    save_part.upload = std::move(upload_);
    save_part.waiter = this;
    save_part.memory = std::move(memory_);
    std::optional<PartOf> mine;
    {
      std::lock_guard<std::mutex> lock(mu_);
      mine = part_of_;  // set by SaveBegin of a multi-part save
    }
    // Taken by FinishOnce: the stream ended meanwhile, abandoning the save.
    if (!mine) return absl::CancelledError("save cancelled");
    save_part.begun = mine->begun;
    waiting_.store(true);
    if (cancelled_.load()) {
      const absl::Status cancelled = absl::CancelledError("save cancelled");
      Abandon(*mine, cancelled);
      return cancelled;
    }
    // Counted before AddPart: the last part's commit delivers at once.
    part_counted_.store(true);
    service_->telemetry().PartWaiting();
    absl::Status added = service_->pending().AddPart(begin_.name(), part.save_id(),
                                                     part.world_size(), std::move(save_part));
    if (!added.ok()) {
      PartNoLongerWaiting();
      return added;
    }
    // OnCancel may have run between the check above and AddPart, finding no
    // part to cancel: cancel it now, or it would be held until the save
    // resolves.
    if (cancelled_.load()) service_->pending().CancelPart(this);
    return absl::OkStatus();
  }

  // The NaN/Inf guard, when the save or the server's --reject-nonfinite
  // asks for it (a multi-part save checks each part's tree).
  absl::Status GuardNonfinite() const {
    std::string why;
    if (begin_.reject_nonfinite()) {
      why = "the save asked to reject non-finite values";
    } else {
      for (const std::string& prefix : service_->options().reject_nonfinite) {
        if (prefix == "*" || absl::StartsWith(begin_.name(), prefix)) {
          why = absl::StrCat("this server rejects non-finite values under '", prefix, "'");
          break;
        }
      }
    }
    if (why.empty()) return absl::OkStatus();
    absl::Status status = CheckFinite(tree_, begin_.name(), why);
    if (!status.ok()) service_->telemetry().AddNonfiniteRefusal();
    return status;
  }

  // Fails early, before any chunk is sent, when the chunks this save adds
  // would take its namespace past its quota. Commit checks again,
  // atomically (concurrent saves, chunks freed meanwhile).
  absl::Status CheckQuota() const {
    return storage::CheckQuota(service_->options().store, begin_.name(),
                               service_->store()->NamespaceBytes(NamespaceOf(begin_.name())),
                               new_bytes_);
  }

  void FillSpec(storage::CommitSpec* spec) const {
    spec->name = begin_.name();
    spec->step = begin_.step();
    spec->epoch = begin_.epoch();
    spec->metadata.insert(begin_.metadata().begin(), begin_.metadata().end());
    spec->tags.assign(begin_.tags().begin(), begin_.tags().end());
    spec->world_size = 1;
    spec->parent = begin_.parent();
  }

  void Send(const v1::SaveResponse& response) {
    grpc::ByteBuffer raw = rpc::ToByteBuffer(response);
    std::lock_guard<std::mutex> lock(mu_);
    if (finish_requested_) return;
    queue_.push_back(std::move(raw));
    PumpLocked();
  }

  // PendingSaves::AbandonSave, counted.
  void Abandon(const PartOf& part, const absl::Status& why) {
    if (service_->pending().AbandonSave(part.name, part.save_id, part.begun, part.rank,
                                        part.world_size, why)) {
      service_->telemetry().AddAbandonedSave();
    }
  }

  // This stream's part, counted as waiting, is not any more (delivered,
  // cancelled, refused): once.
  void PartNoLongerWaiting() {
    if (part_counted_.exchange(false)) service_->telemetry().PartDone();
  }

  // Ends the stream with `status` (the first call wins). A rank of a
  // multi-part save that fails before its part is handed over abandons the
  // save: the other ranks get Aborted instead of waiting --part-timeout.
  void FinishOnce(const absl::Status& status) {
    std::optional<PartOf> abandons;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finish_requested_) return;
      finish_requested_ = true;
      finish_status_ = status;
      if (!status.ok() && !waiting_.load()) abandons = std::exchange(part_of_, std::nullopt);
      if (!abandons) {
        PumpLocked();
        return;
      }
    }
    // Outside mu_: other ranks' streams get the news (their FinishOnce).
    Abandon(*abandons, status);
    std::lock_guard<std::mutex> lock(mu_);
    PumpLocked();
  }

  bool finish_requested() {
    std::lock_guard<std::mutex> lock(mu_);
    return finish_requested_;
  }

  // Starts the next write, or Finish once the queue is drained.
  void PumpLocked() {
    if (writing_ || finished_) return;
    if (!queue_.empty()) {
      writing_ = true;
      in_flight_ = std::move(queue_.front());
      queue_.pop_front();
      StartWrite(&in_flight_);
      return;
    }
    if (finish_requested_) {
      finished_ = true;
      // Recorded before the client can see the status.
      record_.End(finish_status_);
      Finish(service_->ToClient(finish_status_));
    }
  }

  CheckpointService* service_;
  grpc::CallbackServerContext* context_;
  const bool counted_;
  bool stream_counted_ = false;
  CallRecord record_;
  std::shared_ptr<const Principal> principal_;
  grpc::ByteBuffer raw_request_;  // the message being read
  v1::SaveRequest request_;       // ... parsed by Dispatch

  // Stream state, touched only by the (serialized) executor tasks.
  v1::SaveBegin begin_;
  MemoryReservation memory_;  // tree_'s share of the server's budget
  std::unique_ptr<storage::Upload> upload_;
  Tree tree_;
  uint64_t tree_bytes_ = 0;
  uint64_t batches_ = 0;
  uint64_t bytes_received_ = 0;
  uint64_t new_bytes_ = 0;  // bytes of the chunks the store lacked
  bool done_reading_ = false;
  absl::flat_hash_map<Digest, uint64_t> chunk_length_;  // every chunk of the tree
  absl::flat_hash_set<Digest> needed_;                  // asked for, not yet received
  bool assembling_ = false;
  Digest current_;
  uint64_t current_length_ = 0;
  std::string buffer_;

  std::atomic<bool> cancelled_{false};
  std::atomic<bool> waiting_{false};
  std::atomic<bool> part_counted_{false};  // in ckpt_parts_waiting

  // Write queue.
  std::mutex mu_;
  std::deque<grpc::ByteBuffer> queue_;
  grpc::ByteBuffer in_flight_;
  bool writing_ = false;
  bool finish_requested_ = false;
  bool finished_ = false;
  absl::Status finish_status_;
  std::optional<PartOf> part_of_;
};

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewSaveReactor(
    CheckpointService* service, grpc::CallbackServerContext* context) {
  return new SaveReactor(service, context);
}

}  // namespace ckpt::server
