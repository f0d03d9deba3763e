// GrpcRawClient's Load stream: the header, the tree, then the data pieces
// in order, checked against the tree (and the slices asked for) before they
// reach the sink.

#include "absl/strings/str_cat.h"
#include "client/grpc_raw_client.h"
#include "client/requests.h"
#include "common/slice.h"
#include "common/status_macros.h"
#include "rpc/convert.h"
#include "rpc/grpc_status.h"
#include "rpc/wire.h"

namespace ckpt::client {

absl::Status GrpcRawClient::Load(const std::string& name, const LoadOptions& options,
                                 LoadSink* sink) {
  grpc::ClientContext context;
  Prepare(&context, options.timeout);
  InFlight in_flight(this, &context);
  CKPT_RETURN_IF_ERROR(in_flight.status());
  absl::Status status;
  {
    StopAttachment stop(options.stop, &context);
    status = RunLoadCall(context, name, options, sink);
    if (!status.ok() && stop.stopped()) return absl::CancelledError("the load was stopped");
  }
  return in_flight.Outcome(std::move(status), "the load");
}

absl::Status GrpcRawClient::RunLoadCall(grpc::ClientContext& context, const std::string& name,
                                        const LoadOptions& options, LoadSink* sink) {
  const v1::LoadRequest request = ToLoadRequest(name, options);
  std::unique_ptr<LoadStream> stream(grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(
      channel_.get(), load_method_, &context, request));
  bool broken = false;
  absl::Status status = RunLoad(stream.get(), options.slices, sink, &broken);
  if (!status.ok() && !broken) context.TryCancel();
  grpc::Status finish = stream->Finish();
  if (!finish.ok() && (status.ok() || finish.error_code() != grpc::StatusCode::CANCELLED)) {
    return rpc::FromGrpcStatus(finish);
  }
  return status;
}

absl::StatusOr<LoadedValue> GrpcRawClient::Load(const std::string& name,
                                                const LoadOptions& options) {
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
    bool AcceptsPartialPieces() const override { return true; }
  } collect;
  collect.sliced = !options.slices.empty();
  CKPT_RETURN_IF_ERROR(Load(name, options, &collect));
  return std::move(collect.value);
}

absl::Status GrpcRawClient::RunLoad(LoadStream* stream, const std::vector<TensorSlice>& slices,
                                    LoadSink* sink, bool* broken) {
  grpc::ByteBuffer raw;
  v1::LoadResponse response;
  auto read = [&](const char* where) -> absl::Status {
    if (stream->Read(&raw)) return absl::OkStatus();
    *broken = true;
    return absl::UnavailableError(absl::StrCat("load stream ended ", where));
  };
  auto parse = [&]() -> absl::Status {
    if (rpc::FromByteBuffer(raw, &response, "LoadResponse").ok()) return absl::OkStatus();
    return absl::InternalError("malformed LoadResponse in load stream");
  };
  CKPT_RETURN_IF_ERROR(read("before the header"));
  CKPT_RETURN_IF_ERROR(parse());
  if (!response.has_header()) return absl::InternalError("load stream without header");
  const VersionInfo version = rpc::FromProto(response.header().version());
  const uint64_t num_nodes = response.header().num_nodes();
  const uint64_t data_bytes = response.header().data_bytes();
  const std::vector<uint32_t> slice_nodes(response.header().slice_nodes().begin(),
                                          response.header().slice_nodes().end());
  Tree tree;
  while (tree.size() < num_nodes) {
    CKPT_RETURN_IF_ERROR(read("in the tree"));
    CKPT_RETURN_IF_ERROR(parse());
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
    return absl::InternalError(absl::StrCat("load header places ", slice_nodes.size(), " slices, ",
                                            slices.size(), " were asked for"));
  }
  for (size_t s = 0; s < slices.size(); ++s) {
    const uint32_t i = slice_nodes[s];
    if (i >= tree.size() || tree[i].kind != NodeKind::kTensor) {
      return absl::InternalError("load header places a slice on a node that is not a tensor");
    }
    CKPT_ASSIGN_OR_RETURN(expect[i], SliceBytes(tree[i].tensor, slices[s]));
  }
  uint64_t tree_bytes = 0;
  for (uint64_t n : expect) tree_bytes += n;
  if (data_bytes != 0 && data_bytes != tree_bytes) {
    return absl::InternalError(absl::StrCat("load header announces ", data_bytes,
                                            " data bytes, the tree holds ", tree_bytes));
  }
  if (!slices.empty()) CKPT_RETURN_IF_ERROR(sink->OnSlices(slice_nodes));
  CKPT_RETURN_IF_ERROR(sink->OnTree(version, tree));
  const bool partial_pieces = sink->AcceptsPartialPieces();
  std::string joined;  // a piece in parts, joined for a sink that wants it whole
  // Pieces must arrive in order: node by node, offsets contiguous.
  size_t node = 0;
  uint64_t offset = 0;
  uint64_t received = 0;
  auto take = [&](const rpc::ReceivedPiece& piece) -> absl::Status {
    if (piece.node != node) {
      if (piece.node < node || piece.node >= tree.size() || offset != expect[node]) {
        return absl::InternalError("load stream pieces out of order");
      }
      for (size_t skipped = node + 1; skipped < piece.node; ++skipped) {
        if (expect[skipped] != 0) return absl::InternalError("load stream skipped a node's data");
      }
      node = piece.node;
      offset = 0;
    }
    if (piece.offset != offset || piece.size > expect[node] - offset) {
      return absl::InternalError("load stream piece out of range");
    }
    if (piece.parts.size() > 1 && !partial_pieces) {
      joined.clear();
      for (absl::string_view part : piece.parts) joined.append(part.data(), part.size());
      CKPT_RETURN_IF_ERROR(sink->OnData(node, offset, joined));
      offset += joined.size();
    } else {
      for (absl::string_view part : piece.parts) {
        CKPT_RETURN_IF_ERROR(sink->OnData(node, offset, part));
        offset += part.size();
      }
    }
    received += piece.size;
    return absl::OkStatus();
  };
  rpc::DataBatchView batch;
  while (received < data_bytes) {
    CKPT_RETURN_IF_ERROR(read("in the data"));
    if (!rpc::DecodeDataBatch(raw, &batch)) {
      // Another encoding of a data message, or not one at all.
      CKPT_RETURN_IF_ERROR(parse());
      if (!response.has_data()) return absl::InternalError("expected data in load stream");
      batch.pieces.clear();
      for (const auto& p : response.data().pieces()) {
        rpc::ReceivedPiece& piece = batch.pieces.emplace_back();
        piece.node = p.node();
        piece.offset = p.offset();
        piece.size = p.data().size();
        piece.parts.push_back(p.data());
      }
    }
    for (const rpc::ReceivedPiece& piece : batch.pieces) CKPT_RETURN_IF_ERROR(take(piece));
  }
  return absl::OkStatus();
}

}  // namespace ckpt::client
