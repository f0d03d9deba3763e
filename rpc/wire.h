#ifndef CKPT_RPC_WIRE_H_
#define CKPT_RPC_WIRE_H_

// Messages as grpc::ByteBuffer, for methods called or registered raw: Load's
// data messages reference chunk bytes, and Save's chunk messages tensor
// bytes, instead of copying them into a protobuf message and again into
// gRPC's buffer. Internal to server/ and client/.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "ckpt/v1/checkpoint.pb.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"

namespace ckpt::rpc {

/// One DataPiece whose bytes are shared, not copied: `bytes` lies inside
/// `*owner`, which the returned buffer keeps alive until gRPC has sent it.
struct SharedPiece {
  uint32_t node = 0;
  uint64_t offset = 0;
  std::shared_ptr<const void> owner;
  absl::string_view bytes;
};

/// LoadResponse{data: DataBatch{pieces}} as gRPC message bytes, identical to
/// what serializing that message would produce; each piece's bytes are a
/// slice of its owner.
grpc::ByteBuffer EncodeDataBatch(absl::Span<const SharedPiece> pieces);

/// A DataPiece of a received message, its bytes where they lie in the
/// message's slices: `parts`, in order, `size` bytes in all (a piece may
/// span slices).
struct ReceivedPiece {
  uint32_t node = 0;
  uint64_t offset = 0;
  uint64_t size = 0;
  std::vector<absl::string_view> parts;
};

/// A received LoadResponse{data: DataBatch{pieces}}, read without copying
/// the pieces' bytes; `slices` keeps them alive.
struct DataBatchView {
  std::vector<grpc::Slice> slices;
  std::vector<ReceivedPiece> pieces;
};

/// Reads `buffer` into *out if it holds LoadResponse{data: DataBatch{pieces}}
/// in the form EncodeDataBatch writes (each piece's fields at most once, in
/// field order, varints in their shortest encoding); the pieces are what
/// parsing the message would give. False
/// for any other message: a header, nodes, another encoding of the same
/// (parse those with FromByteBuffer, which also says what is malformed).
bool DecodeDataBatch(const grpc::ByteBuffer& buffer, DataBatchView* out);

/// One ChunkPiece to encode; its bytes are copied once, into the message.
struct ChunkPieceView {
  absl::string_view digest;
  uint64_t offset = 0;
  absl::string_view bytes;
};

/// SaveRequest{chunks: ChunkBatch{pieces}} as gRPC message bytes, identical
/// to what serializing that message would produce, with each piece's bytes
/// copied once into a slice gRPC owns (a protobuf message would take two
/// copies). Not borrowed: gRPC may hold a message past the write that sent
/// it (until its transport wrote or dropped it, which a peer that stopped
/// reading can delay indefinitely), and a save must return at its deadline.
grpc::ByteBuffer EncodeChunkBatch(absl::Span<const ChunkPieceView> pieces);

/// Serializes `message` (copying) into a ByteBuffer.
grpc::ByteBuffer ToByteBuffer(const google::protobuf::MessageLite& message);

/// Parses `buffer` into `message`. InvalidArgument("malformed <what>") if the
/// bytes are not a valid message.
absl::Status FromByteBuffer(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message,
                            absl::string_view what);

}  // namespace ckpt::rpc

#endif  // CKPT_RPC_WIRE_H_
