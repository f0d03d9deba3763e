#include "server/service.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/crash_point.h"
#include "common/names.h"
#include "common/retention.h"
#include "common/select.h"
#include "common/slice.h"
#include "common/status_macros.h"
#include "rpc/convert.h"
#include "rpc/grpc_status.h"
#include "rpc/protocol.h"
#include "rpc/wire.h"
#include "server/pending_saves.h"

namespace ckpt::server {
namespace {

using rpc::kNodeBatchBytes;
using rpc::kPieceBytes;
// Runs of a sliced tensor shorter than this are copied into a piece of their
// own; longer ones are sent from the chunk read, like whole tensors.
constexpr size_t kCopyRunsBelow = 64 << 10;
constexpr uint32_t kMaxManifestPage = 10000;
constexpr uint32_t kMaxListPage = 1000;

std::string Hex(const Digest& d) { return d.Hex(); }

// Reference counting shared by the streaming reactors: gRPC's OnDone drops
// one reference, every task posted to the executor holds one, so a reactor
// is deleted only once gRPC and our own work are both done with it.
class RefCounted {
 public:
  virtual ~RefCounted() = default;
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

 private:
  std::atomic<int> refs_{1};
};

// ---------------------------------------------------------------- Save

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
        return OnChunks(request_.chunks());
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
      return absl::ResourceExhaustedError(absl::StrCat(
          "server busy: checkpoint trees in flight hold ", budget.used(), " bytes of memory and "
          "this save's would take ", memory_.bytes() + memory, " (--max-tree-memory ",
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

  absl::Status OnChunks(const v1::ChunkBatch& batch) {
    if (!upload_) return absl::FailedPreconditionError("SaveBegin must come first");
    for (const v1::ChunkPiece& piece : batch.pieces()) {
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
      absl::Span<const uint8_t> bytes;
      if (buffer_.empty() && data.size() == current_length_) {
        // The whole chunk in one piece: no copy.
        bytes = {reinterpret_cast<const uint8_t*>(data.data()), data.size()};
      } else {
        buffer_.append(data);
        if (buffer_.size() < current_length_) continue;
        bytes = {reinterpret_cast<const uint8_t*>(buffer_.data()), buffer_.size()};
      }
      CKPT_RETURN_IF_ERROR(upload_->PutChunk(digest, bytes));
      CKPT_CRASH_POINT("save.chunk");
      bytes_received_ += bytes.size();
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
    save_part.rank = part.rank();
    save_part.tree = std::move(tree_);
    save_part.upload = std::move(upload_);
    save_part.step = begin_.step();
    save_part.epoch = begin_.epoch();
    save_part.metadata.insert(begin_.metadata().begin(), begin_.metadata().end());
    save_part.tags.assign(begin_.tags().begin(), begin_.tags().end());
    save_part.waiter = this;
    save_part.memory = std::move(memory_);
    waiting_.store(true);
    if (cancelled_.load()) return absl::CancelledError("save cancelled");
    CKPT_RETURN_IF_ERROR(service_->pending().AddPart(begin_.name(), part.save_id(),
                                                     part.world_size(), std::move(save_part)));
    // OnCancel may have run between the check above and AddPart, finding no
    // part to cancel: cancel it now, or it would be held until the save
    // resolves.
    if (cancelled_.load()) service_->pending().CancelPart(this);
    return absl::OkStatus();
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
  }

  void Send(const v1::SaveResponse& response) {
    grpc::ByteBuffer raw = rpc::ToByteBuffer(response);
    std::lock_guard<std::mutex> lock(mu_);
    if (finish_requested_) return;
    queue_.push_back(std::move(raw));
    PumpLocked();
  }

  void FinishOnce(const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finish_requested_) return;
    finish_requested_ = true;
    finish_status_ = status;
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

  // Write queue.
  std::mutex mu_;
  std::deque<grpc::ByteBuffer> queue_;
  grpc::ByteBuffer in_flight_;
  bool writing_ = false;
  bool finish_requested_ = false;
  bool finished_ = false;
  absl::Status finish_status_;
};

// ---------------------------------------------------------------- Load

class LoadReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                          public RefCounted,
                          public IdleWatched {
 public:
  LoadReactor(CheckpointService* service, grpc::CallbackServerContext* context,
              const grpc::ByteBuffer& raw_request)
      : service_(service),
        context_(context),
        counted_(service->Enter()),
        record_(&service->telemetry(), "Load", context->peer()) {
    absl::Status parsed = rpc::FromByteBuffer(raw_request, &request_, "LoadRequest");
    const v1::LoadRequest& request = request_;
    record_.set_checkpoint(request.name());
    record_.set_version(request.version());
    if (!counted_) {
      FinishEarly(absl::UnavailableError("server shutting down"));
      return;
    }
    if (!parsed.ok()) {
      FinishEarly(parsed);
      return;
    }
    auto principal = service->Authenticate(*context);
    if (!principal.ok()) {
      FinishEarly(principal.status());
      return;
    }
    record_.set_principal((*principal)->name());
    absl::Status allowed = ValidateName(request.name());
    if (allowed.ok()) allowed = (*principal)->Check(Right::kRead, request.name());
    if (!allowed.ok()) {
      FinishEarly(allowed);
      return;
    }
    stream_counted_ = service->EnterStream("Load");
    if (!stream_counted_) {
      FinishEarly(service->TooManyStreams());
      return;
    }
    service->watchdog().Add(this);
    producing_ = true;
    Post();
  }
  ~LoadReactor() override {
    if (stream_counted_) service_->LeaveStream("Load");
    if (counted_) service_->Leave();
  }

  void OnWriteDone(bool ok) override {
    StopWaiting();
    bool produce = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = -1;
      if (!ok) {
        EndLocked(absl::CancelledError("client went away"));
        return;
      }
      if (ready_ != -1) {
        writing_ = ready_;
        ready_ = -1;
        StartWaiting();
        StartWrite(&buffers_[writing_]);
      }
      if (!producing_ && !exhausted_) produce = producing_ = true;
      MaybeFinishLocked();
    }
    // Outside mu_: a stopped executor runs the task inline, and the task
    // takes mu_.
    if (produce) Post();
  }

  void OnCancel() override { cancelled_.store(true); }
  void OnDone() override {
    service_->watchdog().Remove(this);
    Unref();
  }

  // IdleWatched: the client took no message for --idle-timeout. Its write
  // is pending, so Finish cannot be sent: cancel the call.
  void OnIdle(absl::Duration waited) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      idle_status_ = absl::DeadlineExceededError(absl::StrCat(
          "load stream idle: the client took no message for ",
          absl::FormatDuration(absl::Trunc(waited, absl::Milliseconds(1))), " (--idle-timeout ",
          absl::FormatDuration(service_->options().idle_timeout), "); cancelled"));
    }
    context_->TryCancel();
  }

 private:
  // Ends a call refused before any work started.
  void FinishEarly(const absl::Status& status) {
    finished_ = true;
    exhausted_ = true;
    final_status_ = status;
    record_.End(status);
    Finish(service_->ToClient(status));
  }

  void Post() {
    Ref();
    service_->executor().Post([this] {
      ProduceLoop();
      Unref();
    });
  }

  // Fills free buffers while gRPC writes the other one: producing the next
  // message (chunk reads, checksums, copies) overlaps sending the last.
  void ProduceLoop() {
    for (;;) {
      int slot;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (exhausted_ || ready_ != -1) {
          producing_ = false;
          return;
        }
        if (cancelled_.load()) {
          producing_ = false;
          EndLocked(absl::CancelledError("load cancelled"));
          return;
        }
        slot = writing_ == 0 ? 1 : 0;
      }
      absl::StatusOr<bool> more = Produce(&buffers_[slot]);
      std::lock_guard<std::mutex> lock(mu_);
      if (exhausted_) {
        // The stream ended while this message was produced (the client
        // went away, or Finish is already sent): no write may start now.
        producing_ = false;
        MaybeFinishLocked();
        return;
      }
      if (!more.ok() || !*more) {
        producing_ = false;
        EndLocked(more.status());
        return;
      }
      if (writing_ == -1) {
        writing_ = slot;
        StartWaiting();
        StartWrite(&buffers_[slot]);
      } else {
        ready_ = slot;
      }
    }
  }

  // No more messages: finish once the last write is done (an error drops
  // what was produced but not yet sent).
  void EndLocked(const absl::Status& status) {
    if (!exhausted_) {
      exhausted_ = true;
      final_status_ = status;
    }
    if (!status.ok()) ready_ = -1;
    MaybeFinishLocked();
  }

  void MaybeFinishLocked() {
    if (!exhausted_ || writing_ != -1 || ready_ != -1 || finished_) return;
    finished_ = true;
    // Recorded before the client can see the status; the log says why the
    // watchdog cancelled an idle stream.
    absl::Status status = final_status_;
    if (!idle_status_.ok()) {
      status = idle_status_;
    } else if (cancelled_.load() && status.ok()) {
      status = absl::CancelledError("load cancelled");
    }
    record_.End(status);
    Finish(service_->ToClient(final_status_));
  }

  // Fills *out with the next message; false when the stream is complete.
  absl::StatusOr<bool> Produce(grpc::ByteBuffer* out) {
    if (!started_) {
      started_ = true;
      v1::LoadResponse response;
      CKPT_RETURN_IF_ERROR(Open(&response));
      *out = rpc::ToByteBuffer(response);
      return true;
    }
    if (next_node_ < selection_.tree.size()) {
      v1::LoadResponse response;
      v1::NodeBatch* batch = response.mutable_nodes();
      size_t bytes = 0;
      while (next_node_ < selection_.tree.size() && bytes < kNodeBatchBytes) {
        v1::Node* node = batch->add_nodes();
        rpc::ToProto(selection_.tree[next_node_++], node);
        bytes += node->ByteSizeLong() + 4;
      }
      *out = rpc::ToByteBuffer(response);
      return true;
    }
    if (request_.skip_data()) return false;
    // Pieces reference the chunks read (one copy, out of RocksDB); gRPC
    // sends them from there. Short runs of a sliced tensor are copied
    // together into one piece instead (a column of a matrix is many runs of
    // a few bytes: a piece each would cost more than the bytes).
    std::vector<rpc::SharedPiece> pieces;
    size_t bytes = 0;
    std::shared_ptr<std::string> packed;
    rpc::SharedPiece packed_piece;
    auto flush_packed = [&] {
      if (packed == nullptr) return;
      packed_piece.bytes = *packed;
      packed_piece.owner = std::move(packed);
      pieces.push_back(std::move(packed_piece));
      packed = nullptr;
    };
    while (bytes < kPieceBytes) {
      if (!node_open_) {
        while (data_node_ < selection_.tree.size() && !selection_.tree[data_node_].has_data()) {
          ++data_node_;
        }
        if (data_node_ >= selection_.tree.size()) break;
        OpenDataNode();
      }
      if (run_left_ == 0 && !NextRun()) {
        node_open_ = false;
        ++data_node_;
        continue;
      }
      const Node& node = selection_.tree[data_node_];
      const uint64_t chunk_size = node.data.chunk_size;
      const size_t chunk_index = run_offset_ / chunk_size;
      if (chunk_ == nullptr || chunk_index != chunk_index_) {
        const Digest& digest = node.data.chunks[chunk_index];
        auto chunk = std::make_shared<std::string>();
        absl::Status status = service_->store()->ReadChunk(version_.name, digest, chunk.get());
        chunk_ = std::move(chunk);
        chunk_index_ = chunk_index;
        if (!status.ok()) {
          chunk_ = nullptr;
          const std::vector<std::string> keys = FlattenedKeys(tree_);
          return Annotate(status, absl::StrCat("checkpoint '", version_.name, "' version ",
                                               version_.version, " ", NodeKindName(node.kind), " '",
                                               keys[selection_.source[data_node_]], "'"));
        }
        if (chunk_->size() != node.data.ChunkLength(chunk_index)) {
          return absl::DataLossError(absl::StrCat("checkpoint '", version_.name, "' version ",
                                                  version_.version, ": chunk ", Hex(digest),
                                                  " has ", chunk_->size(), " bytes, manifest says ",
                                                  node.data.ChunkLength(chunk_index)));
        }
      }
      const uint64_t in_chunk = run_offset_ - uint64_t{chunk_index} * chunk_size;
      const size_t take = static_cast<size_t>(
          std::min<uint64_t>({chunk_->size() - in_chunk, run_left_, kPieceBytes - bytes}));
      const absl::string_view run = absl::string_view(*chunk_).substr(in_chunk, take);
      if (slice_runs_.has_value() && take < kCopyRunsBelow) {
        if (packed != nullptr && packed_piece.node != data_node_) flush_packed();
        if (packed == nullptr) {
          packed = std::make_shared<std::string>();
          packed->reserve(std::min<uint64_t>(kPieceBytes - bytes, node_bytes_ - node_sent_));
          packed_piece.node = static_cast<uint32_t>(data_node_);
          packed_piece.offset = node_sent_;
        }
        packed->append(run.data(), run.size());
      } else {
        flush_packed();
        rpc::SharedPiece& piece = pieces.emplace_back();
        piece.node = static_cast<uint32_t>(data_node_);
        piece.offset = node_sent_;
        piece.owner = chunk_;
        piece.bytes = run;
      }
      record_.AddBytesOut(take);
      node_sent_ += take;
      run_offset_ += take;
      run_left_ -= take;
      bytes += take;
    }
    flush_packed();
    if (bytes == 0) return false;
    *out = rpc::EncodeDataBatch(pieces);
    return true;
  }

  void OpenDataNode() {
    const Node& node = selection_.tree[data_node_];
    node_open_ = true;
    node_sent_ = 0;
    run_left_ = 0;
    chunk_ = nullptr;
    whole_run_taken_ = false;
    slice_runs_.reset();
    auto it = slice_of_node_.find(data_node_);
    if (it != slice_of_node_.end()) {
      slice_runs_.emplace(node.tensor, slices_[it->second]);
      node_bytes_ = slice_runs_->total_bytes();
    } else {
      node_bytes_ = node.data.size;
    }
  }

  // The next run of the current node's data into run_offset_/run_left_;
  // false when the node is done.
  bool NextRun() {
    if (slice_runs_.has_value()) return slice_runs_->Next(&run_offset_, &run_left_);
    if (whole_run_taken_ || node_bytes_ == 0) return false;
    whole_run_taken_ = true;
    run_offset_ = 0;
    run_left_ = node_bytes_;
    return true;
  }

  absl::Status Open(v1::LoadResponse* response) {
    storage::VersionSelector selector{request_.version(), request_.tag()};
    CKPT_ASSIGN_OR_RETURN(version_, service_->store()->GetVersion(request_.name(), selector));
    record_.set_version(version_.version);
    CKPT_ASSIGN_OR_RETURN(tree_, service_->store()->GetTree(version_.name, version_.version));
    std::vector<std::string> texts(request_.patterns().begin(), request_.patterns().end());
    CKPT_ASSIGN_OR_RETURN(std::vector<KeyPattern> patterns, CompilePatterns(texts));
    // Slices name tensors by key; each selects its tensor too.
    for (const v1::TensorSlice& s : request_.slices()) {
      slices_.push_back(TensorSlice{s.key(),
                                    {s.start().begin(), s.start().end()},
                                    {s.length().begin(), s.length().end()}});
    }
    CKPT_ASSIGN_OR_RETURN(std::vector<size_t> sliced, FindSlices(tree_, slices_));
    std::vector<bool> also(sliced.empty() ? 0 : tree_.size(), false);
    for (size_t node : sliced) also[node] = true;
    CKPT_ASSIGN_OR_RETURN(selection_, SelectTree(tree_, patterns, also, &cancelled_));
    uint64_t slice_runs = 0;
    absl::flat_hash_map<size_t, size_t> slice_of_source;
    for (size_t s = 0; s < sliced.size(); ++s) slice_of_source[sliced[s]] = s;
    uint64_t data_bytes = 0;
    for (size_t i = 0; i < selection_.tree.size(); ++i) {
      auto it = slice_of_source.find(selection_.source[i]);
      if (it == slice_of_source.end()) {
        data_bytes += selection_.tree[i].data.size;
        continue;
      }
      slice_of_node_[i] = it->second;
      const SliceRuns runs(selection_.tree[i].tensor, slices_[it->second]);
      data_bytes += runs.total_bytes();
      slice_runs += runs.num_runs();
      if (slice_runs > kMaxSliceRuns) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the slices of this load cover more than ", kMaxSliceRuns,
            " contiguous runs of their tensors (slice of '",
            Excerpt(slices_[it->second].key, 256), "' and those before it): ask for boxes whose "
            "rows are longer, or load whole tensors"));
      }
    }
    v1::LoadHeader* header = response->mutable_header();
    rpc::ToProto(version_, header->mutable_version());
    header->set_num_nodes(selection_.tree.size());
    header->set_data_bytes(request_.skip_data() ? 0 : data_bytes);
    header->mutable_slice_nodes()->Resize(static_cast<int>(slices_.size()), 0);
    for (const auto& [node, slice] : slice_of_node_) {
      header->set_slice_nodes(static_cast<int>(slice), static_cast<uint32_t>(node));
    }
    return absl::OkStatus();
  }

  CheckpointService* service_;
  grpc::CallbackServerContext* context_;
  v1::LoadRequest request_;  // parsed by the constructor, then constant
  const bool counted_;
  bool stream_counted_ = false;
  CallRecord record_;
  std::atomic<bool> cancelled_{false};
  absl::Status idle_status_;  // under mu_; why the watchdog cancelled

  // Pipeline state, under mu_.
  std::mutex mu_;
  grpc::ByteBuffer buffers_[2];
  int writing_ = -1;  // buffer gRPC is writing
  int ready_ = -1;    // buffer produced, waiting for the write slot
  bool producing_ = false;
  bool exhausted_ = false;
  bool finished_ = false;
  absl::Status final_status_;

  bool started_ = false;
  VersionInfo version_;
  Tree tree_;
  Selection selection_;
  size_t next_node_ = 0;
  std::vector<TensorSlice> slices_;
  absl::flat_hash_map<size_t, size_t> slice_of_node_;  // selected node -> slices_ index
  // The data node being sent: its runs (a whole node is one run), the run
  // in progress (offset in the node's data, bytes left) and the bytes of the
  // node sent so far (the offset of its next piece).
  size_t data_node_ = 0;
  bool node_open_ = false;
  std::optional<SliceRuns> slice_runs_;
  bool whole_run_taken_ = false;
  uint64_t node_bytes_ = 0;
  uint64_t node_sent_ = 0;
  uint64_t run_offset_ = 0;
  uint64_t run_left_ = 0;
  // The last chunk read (of the current node), reused by the runs in it.
  size_t chunk_index_ = 0;
  std::shared_ptr<const std::string> chunk_;
};

// The checkpoint a request names, for its log line ("" if none).
template <typename Req>
auto NameOf(const Req& request, int) -> decltype(request.name(), std::string()) {
  return request.name();
}
template <typename Req>
std::string NameOf(const Req&, long) {
  return "";
}
template <typename Req>
std::string NameOf(const Req& request) {
  return NameOf(request, 0);
}

absl::StatusOr<uint64_t> ParsePageToken(const std::string& token) {
  uint64_t value = 0;
  if (token.empty()) return value;
  if (!absl::SimpleAtoi(token, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid page_token '", Excerpt(token), "'"));
  }
  return value;
}

// OK if `name` is valid and `principal` has `right` on it.
absl::Status CheckName(const Principal& principal, Right right, absl::string_view name) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  return principal.Check(right, name);
}

}  // namespace

CheckpointService::CheckpointService(storage::Store* store, const ServerOptions& options,
                                     std::unique_ptr<Authenticator> auth)
    : store_(store),
      options_(options),
      auth_(auth ? std::move(auth) : std::make_unique<Authenticator>()),
      telemetry_(std::make_unique<Telemetry>(store, options.log_level)),
      watchdog_(std::make_unique<IdleWatchdog>(options.idle_timeout)),
      tree_memory_(options.max_tree_memory),
      pending_(std::make_unique<PendingSaves>(store, options.store.max_chunk_bytes,
                                              options.part_timeout)),
      executor_(std::make_unique<Executor>(options.worker_threads)) {}

CheckpointService::~CheckpointService() { Stop(); }

void CheckpointService::Stop() {
  pending_->Shutdown();   // fails waiting parts
  executor_->Shutdown();  // runs what is queued, then joins
}

template <typename Req, typename Resp, typename Fn>
grpc::ServerUnaryReactor* CheckpointService::RunUnary(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* raw_request,
                                                      grpc::ByteBuffer* raw_response,
                                                      absl::string_view method, Fn fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto record = std::make_shared<CallRecord>(telemetry_.get(), method, context->peer());
  auto request = std::make_shared<Req>();
  absl::Status parsed = rpc::FromByteBuffer(*raw_request, request.get(), Req::descriptor()->name());
  if (parsed.ok()) record->set_checkpoint(NameOf(*request));
  if (!Enter()) {
    absl::Status status = absl::UnavailableError("server shutting down");
    record->End(status);
    reactor->Finish(ToClient(status));
    return reactor;
  }
  auto principal = Authenticate(*context);
  if (!principal.ok() || !parsed.ok()) {
    const absl::Status status = principal.ok() ? parsed : principal.status();
    record->End(status);
    reactor->Finish(ToClient(status));
    Leave();
    return reactor;
  }
  record->set_principal((*principal)->name());
  executor_->Post([this, reactor, record, request, raw_response,
                   principal = *std::move(principal), fn = std::move(fn)]() mutable {
    Resp response;
    absl::Status status = fn(*principal, *record, *request, &response);
    if (status.ok()) *raw_response = rpc::ToByteBuffer(response);
    record->End(status);
    reactor->Finish(ToClient(status));
    Leave();
  });
  return reactor;
}

grpc::Status CheckpointService::ToClient(const absl::Status& status) const {
  if (status.ok() || options_.store.path.empty()) return rpc::ToGrpcStatus(status);
  // Paths of the store's files say where the server keeps its data: not a
  // client's business.
  std::string message(status.message());
  std::string dir = options_.store.path;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::error_code ec;
  const std::string absolute = std::filesystem::absolute(dir, ec).lexically_normal().string();
  for (const std::string& path : {absolute, dir}) {
    if (path.size() > 1) message = absl::StrReplaceAll(message, {{path, "<data-dir>"}});
  }
  return rpc::ToGrpcStatus(absl::Status(status.code(), message));
}

absl::StatusOr<std::shared_ptr<const Principal>> CheckpointService::Authenticate(
    const grpc::CallbackServerContext& context) const {
  std::vector<absl::string_view> values;
  auto range = context.client_metadata().equal_range("authorization");
  for (auto it = range.first; it != range.second; ++it) {
    values.emplace_back(it->second.data(), it->second.size());
  }
  return auth_->Authenticate(values);
}

bool CheckpointService::EnterStream(absl::string_view method) {
  const int before = streams_.fetch_add(1);
  if (options_.max_streams > 0 && before >= options_.max_streams) {
    streams_.fetch_sub(1);
    return false;
  }
  telemetry_->StreamOpened(method);
  return true;
}

void CheckpointService::LeaveStream(absl::string_view method) {
  telemetry_->StreamClosed(method);
  streams_.fetch_sub(1);
}

absl::Status CheckpointService::TooManyStreams() const {
  return absl::ResourceExhaustedError(
      absl::StrCat("too many streams: ", options_.max_streams,
                   " Save and Load streams are open (--max-streams); retry later"));
}

bool CheckpointService::Enter() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  if (draining_) return false;
  ++in_flight_;
  return true;
}

void CheckpointService::Leave() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  if (--in_flight_ == 0) drain_cv_.notify_all();
}

bool CheckpointService::Drain(absl::Duration grace) {
  std::unique_lock<std::mutex> lock(drain_mu_);
  draining_ = true;
  return drain_cv_.wait_for(lock, absl::ToChronoMilliseconds(grace),
                            [this] { return in_flight_ == 0; });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* CheckpointService::Save(
    grpc::CallbackServerContext* context) {
  return new SaveReactor(this, context);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* CheckpointService::Load(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return new LoadReactor(this, context, *request);
}

grpc::ServerUnaryReactor* CheckpointService::ListCheckpoints(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::ListCheckpointsRequest, v1::ListCheckpointsResponse>(
      context, raw_request, raw_response, "ListCheckpoints",
      [this](const Principal& principal, CallRecord&, const v1::ListCheckpointsRequest& request,
             v1::ListCheckpointsResponse* response) -> absl::Status {
        const std::string& prefix = request.prefix();
        CKPT_RETURN_IF_ERROR(ValidatePrefix(prefix));
        const uint32_t limit =
            request.page_size() == 0 ? kMaxListPage : std::min(request.page_size(), kMaxListPage);
        std::vector<CheckpointSummary> list;
        std::optional<std::vector<std::string>> scopes = principal.ReadableUnder(prefix);
        if (!scopes.has_value()) {
          CKPT_ASSIGN_OR_RETURN(list,
                                store_->ListCheckpoints(prefix, request.page_token(), limit + 1));
        } else {
          if (scopes->empty()) {
            return absl::PermissionDeniedError(
                absl::StrCat("token '", principal.name(), "' has no read right on any name under '",
                             prefix, "'"));
          }
          // The readable names are those of each grant prefix: list each, keep
          // the first limit + 1 of their union in order.
          for (const std::string& scope : *scopes) {
            std::string after = request.page_token();
            size_t found = 0;
            while (found <= limit) {
              CKPT_ASSIGN_OR_RETURN(auto page, store_->ListCheckpoints(scope, after, limit + 1));
              for (auto& c : page) {
                if (!PrefixCovers(scope, c.name)) continue;
                list.push_back(std::move(c));
                ++found;
              }
              if (page.size() < limit + 1) break;
              after = page.back().name;
            }
          }
          std::sort(list.begin(), list.end(),
                    [](const auto& a, const auto& b) { return a.name < b.name; });
          list.erase(std::unique(list.begin(), list.end(),
                                 [](const auto& a, const auto& b) { return a.name == b.name; }),
                     list.end());
          if (list.size() > limit + 1) list.resize(limit + 1);
        }
        for (size_t i = 0; i < list.size() && i < limit; ++i) {
          v1::CheckpointSummary* out = response->add_checkpoints();
          out->set_name(list[i].name);
          out->set_latest_version(list[i].latest_version);
          out->set_num_versions(list[i].num_versions);
          VersionInfo t;
          t.create_time_ms = list[i].latest_create_time_ms;
          v1::VersionInfo tmp;
          rpc::ToProto(t, &tmp);
          *out->mutable_latest_create_time() = tmp.create_time();
        }
        if (list.size() > limit) response->set_next_page_token(list[limit - 1].name);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::ListVersions(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::ListVersionsRequest, v1::ListVersionsResponse>(
      context, raw_request, raw_response, "ListVersions",
      [this](const Principal& principal, CallRecord&, const v1::ListVersionsRequest& request,
             v1::ListVersionsResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, request.name()));
        CKPT_ASSIGN_OR_RETURN(uint64_t after, ParsePageToken(request.page_token()));
        const uint32_t limit =
            request.page_size() == 0 ? kMaxListPage : std::min(request.page_size(), kMaxListPage);
        CKPT_ASSIGN_OR_RETURN(auto versions,
                              store_->ListVersions(request.name(), after, limit + 1));
        // Pages stop at a size that always fits a message: one version is
        // bounded (metadata and tag limits), many are not.
        size_t bytes = 0;
        size_t i = 0;
        for (; i < versions.size() && i < limit && bytes < 3 * kNodeBatchBytes; ++i) {
          v1::VersionInfo* out = response->add_versions();
          rpc::ToProto(versions[i], out);
          bytes += out->ByteSizeLong() + 4;
        }
        if (i < versions.size()) response->set_next_page_token(absl::StrCat(versions[i - 1].version));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::GetManifest(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::GetManifestRequest, v1::GetManifestResponse>(
      context, raw_request, raw_response, "GetManifest",
      [this](const Principal& principal, CallRecord& record, const v1::GetManifestRequest& request,
             v1::GetManifestResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, request.name()));
        CKPT_ASSIGN_OR_RETURN(uint64_t first, ParsePageToken(request.page_token()));
        storage::VersionSelector selector{request.version(), request.tag()};
        CKPT_ASSIGN_OR_RETURN(VersionInfo version, store_->GetVersion(request.name(), selector));
        record.set_version(version.version);
        CKPT_ASSIGN_OR_RETURN(Tree tree, store_->GetTree(version.name, version.version));
        if (first > tree.size()) {
          return absl::InvalidArgumentError(
              absl::StrCat("page_token ", first, " past the ", tree.size(), " nodes"));
        }
        const uint32_t limit = request.page_size() == 0
                                   ? kMaxManifestPage
                                   : std::min(request.page_size(), kMaxManifestPage);
        rpc::ToProto(version, response->mutable_version());
        response->set_first_node(first);
        size_t bytes = 0;
        size_t i = first;
        for (; i < tree.size() && i - first < limit && bytes < 3 * kNodeBatchBytes; ++i) {
          v1::Node* node = response->add_nodes();
          rpc::ToProto(tree[i], node);
          bytes += node->ByteSizeLong() + 4;
        }
        if (i < tree.size()) response->set_next_page_token(absl::StrCat(i));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::DeleteVersion(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::DeleteVersionRequest, v1::DeleteVersionResponse>(
      context, raw_request, raw_response, "DeleteVersion",
      [this](const Principal& principal, CallRecord& record, const v1::DeleteVersionRequest& request,
             v1::DeleteVersionResponse* response) -> absl::Status {
        record.set_version(request.version());
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kAdmin, request.name()));
        if (request.version() == 0) {
          return absl::InvalidArgumentError("DeleteVersion needs a version number");
        }
        CKPT_ASSIGN_OR_RETURN(
            uint64_t released,
            store_->DeleteVersion(request.name(), request.version(), request.force()));
        response->set_released_chunks(released);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::SetTag(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::SetTagRequest, v1::SetTagResponse>(
      context, raw_request, raw_response, "SetTag",
      [this](const Principal& principal, CallRecord& record, const v1::SetTagRequest& request,
             v1::SetTagResponse* response) -> absl::Status {
                    record.set_version(request.version());
                    CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kWrite, request.name()));
                    if (request.version() == 0)
                      return absl::InvalidArgumentError("SetTag needs a version");
                    return store_->SetTag(request.name(), request.tag(), request.version());
                  });
}

grpc::ServerUnaryReactor* CheckpointService::DeleteTag(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::DeleteTagRequest, v1::DeleteTagResponse>(
      context, raw_request, raw_response, "DeleteTag",
      [this](const Principal& principal, CallRecord&, const v1::DeleteTagRequest& request,
             v1::DeleteTagResponse* response) -> absl::Status {
                    CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kWrite, request.name()));
                    return store_->DeleteTag(request.name(), request.tag());
                  });
}

grpc::ServerUnaryReactor* CheckpointService::GetServerInfo(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  // Any valid token: store-wide totals, no names.
  return RunUnary<v1::GetServerInfoRequest, v1::GetServerInfoResponse>(
      context, raw_request, raw_response, "GetServerInfo",
      [this](const Principal&, CallRecord&, const v1::GetServerInfoRequest& request,
             v1::GetServerInfoResponse* response) -> absl::Status {
                    CKPT_ASSIGN_OR_RETURN(storage::StoreStats stats, store_->Stats());
                    response->set_server_version(CKPT_VERSION);
                    response->set_chunk_size(options_.chunk_size);
                    response->set_max_message_bytes(options_.max_message_bytes);
                    v1::StorageStats* out = response->mutable_stats();
                    out->set_checkpoints(stats.checkpoints);
                    out->set_versions(stats.versions);
                    out->set_chunks(stats.chunks);
                    out->set_stored_bytes(stats.stored_bytes);
                    out->set_logical_bytes(stats.logical_bytes);
                    out->set_dedup_ratio(stats.stored_bytes
                                             ? static_cast<double>(stats.logical_bytes) /
                                                   static_cast<double>(stats.stored_bytes)
                                             : 1.0);
                    out->set_disk_bytes(stats.disk_bytes);
                    out->set_active_uploads(stats.active_uploads);
                    out->set_garbage_bytes(stats.garbage_bytes);
                    return absl::OkStatus();
                  });
}

grpc::ServerUnaryReactor* CheckpointService::GetUsage(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::GetUsageRequest, v1::GetUsageResponse>(
      context, raw_request, raw_response, "GetUsage",
      [this](const Principal& principal, CallRecord&, const v1::GetUsageRequest& request,
             v1::GetUsageResponse* response) -> absl::Status {
        // "team", "team/" and "team/run-1/model" all mean the namespace team.
        const absl::string_view ns =
            absl::string_view(request.namespace_()).substr(0, request.namespace_().find('/'));
        if (ns.empty()) {
          return absl::InvalidArgumentError("GetUsage needs a namespace (e.g. \"team\")");
        }
        // The whole namespace's bytes: a right on part of it is not enough.
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, ns));
        response->set_namespace_(std::string(ns));
        response->set_used_bytes(store_->NamespaceBytes(ns));
        response->set_quota_bytes(storage::NamespaceQuota(options_.store, ns));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::GarbageCollect(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::GarbageCollectRequest, v1::GarbageCollectResponse>(
      context, raw_request, raw_response, "GarbageCollect",
      [this](const Principal& principal, CallRecord&, const v1::GarbageCollectRequest& request,
             v1::GarbageCollectResponse* response) -> absl::Status {
                    CKPT_RETURN_IF_ERROR(principal.CheckGlobal(Right::kAdmin, "collect garbage"));
                    CKPT_ASSIGN_OR_RETURN(storage::GcResult gc, store_->CollectGarbage());
                    response->set_chunks_removed(gc.chunks_removed);
                    response->set_bytes_removed(gc.bytes_removed);
                    response->set_orphan_uploads_removed(gc.orphan_uploads_removed);
                    return absl::OkStatus();
                  });
}

grpc::ServerUnaryReactor* CheckpointService::Backup(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::BackupRequest, v1::BackupResponse>(
      context, raw_request, raw_response, "Backup",
      [this](const Principal& principal, CallRecord&, const v1::BackupRequest& request,
             v1::BackupResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(principal.CheckGlobal(Right::kAdmin, "back up the store"));
        if (options_.backup_dir.empty()) {
          return absl::FailedPreconditionError(
              "backups are off on this server: start ckpt-server with --backup-dir DIR");
        }
        std::string name = request.name();
        if (name.empty()) {
          name = absl::FormatTime("ckpt-backup-%Y%m%dT%H%M%SZ", absl::Now(), absl::UTCTimeZone());
        }
        const bool valid =
            name.size() <= 128 && name != "." && name != ".." &&
            std::all_of(name.begin(), name.end(), [](char c) {
              return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
                     c == '-';
            });
        if (!valid) {
          return absl::InvalidArgumentError(absl::StrCat(
              "backup name '", Excerpt(name),
              "' is not valid: letters, digits, '.', '_' and '-', at most 128 characters"));
        }
        CKPT_ASSIGN_OR_RETURN(BackupInfo backup,
                              store_->Backup(options_.backup_dir + "/" + name));
        response->set_name(backup.name);
        response->set_path(backup.path);
        response->set_files(backup.files);
        response->set_bytes(backup.bytes);
        response->set_versions(backup.versions);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::SetRetention(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::SetRetentionRequest, v1::SetRetentionResponse>(
      context, raw_request, raw_response, "SetRetention",
      [this](const Principal& principal, CallRecord&, const v1::SetRetentionRequest& request,
             v1::SetRetentionResponse* response) -> absl::Status {
        // Deleting versions is an admin's right; so is choosing which go.
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kAdmin, request.name()));
        CKPT_RETURN_IF_ERROR(
            store_->SetRetention(request.name(), rpc::FromProto(request.policy())));
        auto would = store_->Prune(request.name(), /*dry_run=*/true);
        if (!would.ok() && would.status().code() != absl::StatusCode::kNotFound) {
          return would.status();
        }
        if (would.ok()) response->mutable_would_delete()->Add(would->begin(), would->end());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::GetRetention(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::GetRetentionRequest, v1::GetRetentionResponse>(
      context, raw_request, raw_response, "GetRetention",
      [this](const Principal& principal, CallRecord&, const v1::GetRetentionRequest& request,
             v1::GetRetentionResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, request.name()));
        CKPT_ASSIGN_OR_RETURN(RetentionPolicy policy, store_->GetRetention(request.name()));
        if (policy.enabled()) rpc::ToProto(policy, response->mutable_policy());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::Prune(grpc::CallbackServerContext* context,
    const grpc::ByteBuffer* raw_request, grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::PruneRequest, v1::PruneResponse>(
      context, raw_request, raw_response, "Prune",
      [this](const Principal& principal, CallRecord&, const v1::PruneRequest& request,
             v1::PruneResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kAdmin, request.name()));
        CKPT_ASSIGN_OR_RETURN(std::vector<uint64_t> deleted,
                              store_->Prune(request.name(), request.dry_run()));
        response->mutable_deleted()->Add(deleted.begin(), deleted.end());
        return absl::OkStatus();
      });
}

}  // namespace ckpt::server
