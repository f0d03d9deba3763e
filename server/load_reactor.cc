// Load: the server stream that sends a checkpoint's header, its (selected)
// tree and its data, whole tensors or the slices asked for, in pieces of at
// most rpc::kPieceBytes.

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/names.h"
#include "common/select.h"
#include "common/slice.h"
#include "common/status_macros.h"
#include "rpc/convert.h"
#include "rpc/protocol.h"
#include "rpc/wire.h"
#include "server/service_internal.h"

namespace ckpt::server {
namespace {

using rpc::kNodeBatchBytes;
using rpc::kPieceBytes;
// Runs of a sliced tensor shorter than this are copied into a piece of their
// own; longer ones are sent from the chunk read, like whole tensors.
constexpr size_t kCopyRunsBelow = 64 << 10;

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
      if (chunk_.owner == nullptr || chunk_index != chunk_index_) {
        const Digest& digest = node.data.chunks[chunk_index];
        const absl::Status read = ReadChunk(chunk_index);
        chunk_index_ = chunk_index;
        if (!read.ok()) {
          const std::vector<std::string> keys = FlattenedKeys(tree_);
          return Annotate(read, absl::StrCat("checkpoint '", version_.name, "' version ",
                                             version_.version, " ", NodeKindName(node.kind), " '",
                                             keys[selection_.source[data_node_]], "'"));
        }
        if (chunk_.bytes.size() != node.data.ChunkLength(chunk_index)) {
          return absl::DataLossError(
              absl::StrCat("checkpoint '", version_.name, "' version ", version_.version,
                           ": chunk ", Hex(digest), " has ", chunk_.bytes.size(),
                           " bytes, manifest says ", node.data.ChunkLength(chunk_index)));
        }
      }
      const uint64_t in_chunk = run_offset_ - uint64_t{chunk_index} * chunk_size;
      const size_t take = static_cast<size_t>(
          std::min<uint64_t>({chunk_.bytes.size() - in_chunk, run_left_, kPieceBytes - bytes}));
      const absl::string_view run = chunk_.bytes.substr(in_chunk, take);
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
        piece.owner = chunk_.owner;
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

  // Reads chunk `chunk_index` of the current data node into chunk_ (left
  // empty on error). A whole load reads the chunks in order, as many at
  // once as the store reads to advantage (Store::read_batch, at most
  // kPieceBytes of them), after telling the store which kAhead follow.
  absl::Status ReadChunk(size_t chunk_index) {
    chunk_ = {};
    const Digest& digest = selection_.tree[data_node_].data.chunks[chunk_index];
    if (!slices_.empty()) {
      CKPT_ASSIGN_OR_RETURN(chunk_, service_->store()->ReadSharedChunk(version_.name, digest));
      return absl::OkStatus();
    }
    // (Never out of step; a mismatch would only cost a read again.)
    if (!read_.empty() && read_.front().digest != digest) read_.clear();
    if (read_.empty()) {
      constexpr size_t kAhead = 4;
      ChunkPosition at{data_node_, chunk_index};
      const std::vector<Digest> together =
          NextChunks(&at, std::max<size_t>(1, service_->store()->read_batch()), kPieceBytes);
      const std::vector<Digest> ahead = NextChunks(&at, kAhead, UINT64_MAX);
      if (!ahead.empty()) service_->store()->ReadAhead(version_.name, ahead);
      auto chunks = service_->store()->ReadSharedChunks(version_.name, together);
      for (size_t i = 0; i < together.size(); ++i) {
        ChunkRead& chunk = read_.emplace_back();
        chunk.digest = together[i];
        if (chunks[i].ok()) {
          chunk.bytes = std::move(*chunks[i]);
        } else {
          chunk.status = chunks[i].status();
        }
      }
    }
    const absl::Status status = read_.front().status;
    if (status.ok()) chunk_ = std::move(read_.front().bytes);
    read_.pop_front();
    return status;
  }

  // A chunk of a selected node: chunk `index` of selection_.tree[node].
  struct ChunkPosition {
    size_t node;
    size_t index;
  };
  // The digests of the next chunks a whole load reads from *at on, advancing
  // *at past them: at most `count`, and past the first only while their
  // lengths add up to at most `max_bytes`.
  std::vector<Digest> NextChunks(ChunkPosition* at, size_t count, uint64_t max_bytes) {
    std::vector<Digest> out;
    uint64_t bytes = 0;
    while (out.size() < count && at->node < selection_.tree.size()) {
      const Node& n = selection_.tree[at->node];
      if (!n.has_data() || at->index >= n.data.chunks.size()) {
        ++at->node;
        at->index = 0;
        continue;
      }
      bytes += n.data.ChunkLength(at->index);
      if (!out.empty() && bytes > max_bytes) break;
      out.push_back(n.data.chunks[at->index++]);
    }
    return out;
  }

  void OpenDataNode() {
    const Node& node = selection_.tree[data_node_];
    node_open_ = true;
    node_sent_ = 0;
    run_left_ = 0;
    chunk_ = {};
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
      slices_.push_back(rpc::FromProto(s));
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
            " contiguous runs of their tensors (slice of '", Excerpt(slices_[it->second].key, 256),
            "' and those before it): ask for boxes whose "
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
  storage::Store::SharedBytes chunk_;  // the chunk being sent (owner null: none)
  // Chunks a whole load has read and not yet sent, in the order it sends them.
  struct ChunkRead {
    Digest digest;
    absl::Status status;
    storage::Store::SharedBytes bytes;
  };
  std::deque<ChunkRead> read_;
};

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* NewLoadReactor(CheckpointService* service,
                                                           grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer& raw_request) {
  return new LoadReactor(service, context, raw_request);
}

}  // namespace ckpt::server
