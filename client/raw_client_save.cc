// GrpcRawClient's Save stream: the tree in node batches hashed one ahead,
// then the chunks the server asks for: each too large for a message of
// rpc::kPieceBytes whole, in a message of its own, when the server accepts
// that (rpc::SendsWholeChunks); the rest in messages of at most kPieceBytes,
// framing included.

#include <algorithm>
#include <deque>
#include <future>
#include <optional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "client/grpc_raw_client.h"
#include "client/requests.h"
#include "common/status_macros.h"
#include "common/tensor_stats.h"
#include "rpc/convert.h"
#include "rpc/grpc_status.h"
#include "rpc/protocol.h"
#include "rpc/wire.h"

namespace ckpt::client {

using rpc::kMaxBatchNodes;
using rpc::kPieceBytes;
using rpc::kPieceFramingBytes;
using rpc::SendsWholeChunks;

absl::StatusOr<SaveResult> GrpcRawClient::Save(const std::string& name, const SaveInput& input,
                                               const SaveOptions& options) {
  grpc::ClientContext context;
  Prepare(&context, options.timeout);
  InFlight in_flight(this, &context);
  CKPT_RETURN_IF_ERROR(in_flight.status());
  absl::StatusOr<SaveResult> result;
  {
    StopAttachment stop(options.stop, &context);
    result = RunSaveCall(context, name, input, options);
    if (!result.ok() && stop.stopped()) return absl::CancelledError("the save was stopped");
  }
  if (result.ok()) return result;
  return in_flight.Outcome(result.status(), "the save");
}

absl::StatusOr<SaveResult> GrpcRawClient::RunSaveCall(grpc::ClientContext& context,
                                                      const std::string& name,
                                                      const SaveInput& input,
                                                      const SaveOptions& options) {
  std::unique_ptr<SaveStream> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel_.get(), save_method_, &context));
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

absl::Status GrpcRawClient::Write(SaveStream* stream, const v1::SaveRequest& request,
                                  bool* broken) {
  return Write(stream, rpc::ToByteBuffer(request), broken);
}

absl::Status GrpcRawClient::Write(SaveStream* stream, const grpc::ByteBuffer& message,
                                  bool* broken) {
  if (!stream->Write(message)) {
    *broken = true;
    return absl::UnavailableError("save stream broken while writing");
  }
  return absl::OkStatus();
}

absl::Status GrpcRawClient::Read(SaveStream* stream, v1::SaveResponse* response,
                                 v1::SaveResponse::MsgCase want, bool* broken) {
  grpc::ByteBuffer raw;
  if (!stream->Read(&raw)) {
    *broken = true;
    return absl::UnavailableError("save stream ended unexpectedly");
  }
  if (absl::Status parsed = rpc::FromByteBuffer(raw, response, "SaveResponse"); !parsed.ok()) {
    return absl::InternalError(parsed.message());
  }
  if (response->msg_case() != want) {
    return absl::InternalError(absl::StrCat("unexpected save response ", response->msg_case()));
  }
  return absl::OkStatus();
}

absl::StatusOr<SaveResult> GrpcRawClient::RunSave(SaveStream* stream, const std::string& name,
                                                  const SaveInput& input,
                                                  const SaveOptions& options, bool* broken) {
  const Tree& tree = input.tree;
  if (tree.empty()) return absl::InvalidArgumentError("nothing to save: empty tree");
  if (input.bytes.size() != tree.size()) {
    return absl::InvalidArgumentError(absl::StrCat("SaveInput has ", tree.size(), " nodes but ",
                                                   input.bytes.size(), " byte spans"));
  }
  v1::SaveRequest request;
  ToSaveBegin(name, options, request.mutable_begin());
  CKPT_RETURN_IF_ERROR(Write(stream, request, broken));
  v1::SaveResponse response;
  CKPT_RETURN_IF_ERROR(Read(stream, &response, v1::SaveResponse::kAccepted, broken));
  uint32_t chunk_size = response.accepted().chunk_size();
  if (options_.chunk_size != 0) {
    chunk_size = std::min(options_.chunk_size, response.accepted().max_chunk_bytes());
  }
  if (chunk_size == 0) return absl::InternalError("server announced chunk size 0");
  const bool whole_chunks = SendsWholeChunks(response.accepted().max_message_bytes(), chunk_size);

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
  const bool with_stats = options.tensor_stats;
  // Each tensor's statistics as this client computed them in its last save
  // of `name`: a tensor whose chunks all hash as they did then keeps them,
  // unread (an incremental save then reads what changed once more, not the
  // rest). Only one batch is prepared at a time, so `current` needs no lock.
  const StatsByNode previous = TakeStats(name);
  StatsByNode current;
  current.reserve(tree.size());
  auto prepare = [&input, &tree, this, chunk_size, with_stats, &previous,
                  &current](size_t next) -> absl::StatusOr<Batch> {
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
        // Statistics in the same pass as the hash, while the chunk is in
        // cache (unless the caller gave them, or asked for none).
        std::optional<StatsAccumulator> stats;
        if (node.kind == NodeKind::kTensor && !node.tensor.stats && with_stats &&
            HasStats(node.tensor.dtype)) {
          stats.emplace(node.tensor.dtype);
        }
        // Whether the chunks so far hash as those of the last save's node
        // (their statistics are deferred while they do).
        const CachedStats* before = nullptr;
        if (stats && source == nullptr) {
          auto it = previous.find(next);
          if (it != previous.end() && it->second.dtype == node.tensor.dtype &&
              it->second.size == node.data.size && it->second.chunk_size == chunk_size) {
            before = &it->second;
          }
        }
        for (uint64_t off = 0; off < node.data.size; off += chunk_size) {
          const size_t len = std::min<uint64_t>(chunk_size, node.data.size - off);
          if (source != nullptr) {
            // Pulled chunk by chunk; read again when sent.
            scratch.resize(len);
            CKPT_RETURN_IF_ERROR(source->Read(
                off, absl::Span<uint8_t>(reinterpret_cast<uint8_t*>(scratch.data()), len)));
            Digest d = Digest::Of(scratch);
            if (stats) stats->Add(scratch);
            node.data.chunks.push_back(d);
            out.sources.emplace(d, ChunkSource{nullptr, len, source, off});
            continue;
          }
          Digest d = Digest::Of(bytes.subspan(off, len));
          const size_t index = node.data.chunks.size();
          if (before != nullptr && before->chunks[index] != d) {
            // Changed after all: the deferred chunks first (chunk by chunk,
            // as a fresh pass would add them), then on.
            for (uint64_t at = 0; at < off; at += chunk_size) {
              stats->Add(absl::string_view(reinterpret_cast<const char*>(bytes.data() + at),
                                           std::min<uint64_t>(chunk_size, off - at)));
            }
            before = nullptr;
          }
          if (stats && before == nullptr) {
            stats->Add(absl::string_view(reinterpret_cast<const char*>(bytes.data() + off), len));
          }
          node.data.chunks.push_back(d);
          out.sources.emplace(d, ChunkSource{bytes.data() + off, len});
        }
        if (stats) {
          node.tensor.stats = before != nullptr ? before->stats : stats->Finish();
          if (source == nullptr) {
            current[next] = CachedStats{node.tensor.dtype, node.data.size, chunk_size,
                                        node.data.chunks, *node.tensor.stats};
          }
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
    CKPT_RETURN_IF_ERROR(
        SendChunks(stream, response.need(), current->sources, whole_chunks, &result, broken));
    result.chunks_total += current->chunks;
    data_done += current->data;
    if (options.progress) options.progress(data_done, data_total);
    if (!more) break;
  }
  request.Clear();
  request.mutable_commit();
  CKPT_RETURN_IF_ERROR(Write(stream, request, broken));
  CKPT_RETURN_IF_ERROR(Read(stream, &response, v1::SaveResponse::kResult, broken));
  KeepStats(name, std::move(current));
  result.version = rpc::FromProto(response.result().version());
  result.pruned_versions.assign(response.result().pruned_versions().begin(),
                                response.result().pruned_versions().end());
  return result;
}

GrpcRawClient::StatsByNode GrpcRawClient::TakeStats(const std::string& name) {
  std::lock_guard<std::mutex> lock(stats_mu_);
  for (auto it = stats_cache_.begin(); it != stats_cache_.end(); ++it) {
    if (it->first != name) continue;
    StatsByNode taken = std::move(it->second);
    stats_cache_.erase(it);
    return taken;
  }
  return {};
}

void GrpcRawClient::KeepStats(const std::string& name, StatsByNode stats) {
  if (stats.empty()) return;
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_cache_.remove_if([&name](const auto& entry) { return entry.first == name; });
  stats_cache_.emplace_front(name, std::move(stats));
  if (stats_cache_.size() > kStatsCacheNames) stats_cache_.pop_back();
}

absl::Status GrpcRawClient::SendChunks(SaveStream* stream, const v1::NeedChunks& need,
                                       const absl::flat_hash_map<Digest, ChunkSource>& sources,
                                       bool whole_chunks, SaveResult* result, bool* broken) {
  // Messages of at most kPieceBytes (pieces and their framing), or of one
  // whole chunk, viewing the input's bytes (or, for DataSource nodes, the
  // chunks pulled for this message; a deque never moves them) until encoded.
  std::vector<rpc::ChunkPieceView> pieces;
  std::deque<std::string> pulled;
  size_t batch_bytes = 0;
  auto flush = [&]() -> absl::Status {
    if (pieces.empty()) return absl::OkStatus();
    CKPT_RETURN_IF_ERROR(Write(stream, rpc::EncodeChunkBatch(pieces), broken));
    pieces.clear();
    // The last pulled chunk may be the one being cut into pieces: it stays.
    while (pulled.size() > 1) pulled.pop_front();
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
      std::string& chunk = pulled.emplace_back(src.length, '\0');
      CKPT_RETURN_IF_ERROR(src.source->Read(
          src.offset, absl::Span<uint8_t>(reinterpret_cast<uint8_t*>(chunk.data()), src.length)));
      src.data = reinterpret_cast<const uint8_t*>(chunk.data());
    }
    const absl::string_view bytes(reinterpret_cast<const char*>(src.data), src.length);
    if (whole_chunks && src.length + kPieceFramingBytes > kPieceBytes) {
      // Whole and alone in its message: the server stores what it received.
      CKPT_RETURN_IF_ERROR(flush());
      pieces.push_back({raw, 0, bytes});
      CKPT_RETURN_IF_ERROR(flush());
    } else {
      // Each piece counts its framing too. A chunk that fits in a message
      // is never split.
      if (src.length + kPieceFramingBytes <= kPieceBytes &&
          batch_bytes + src.length + kPieceFramingBytes > kPieceBytes) {
        CKPT_RETURN_IF_ERROR(flush());
      }
      for (size_t off = 0; off < src.length;) {
        if (batch_bytes + kPieceFramingBytes >= kPieceBytes) CKPT_RETURN_IF_ERROR(flush());
        const size_t len =
            std::min(src.length - off, kPieceBytes - batch_bytes - kPieceFramingBytes);
        pieces.push_back({raw, off, bytes.substr(off, len)});
        batch_bytes += len + kPieceFramingBytes;
        off += len;
      }
    }
    result->bytes_sent += src.length;
    ++result->chunks_sent;
  }
  return flush();
}

}  // namespace ckpt::client
