#include "rpc/wire.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/proto_buffer_reader.h"
#include "grpcpp/support/proto_buffer_writer.h"
#include "grpcpp/support/slice.h"

namespace ckpt::rpc {
namespace {

using google::protobuf::io::CodedOutputStream;

// Wire tags: (field number << 3) | wire type (0 varint, 2 length-delimited).
constexpr uint8_t kResponseData = (3 << 3) | 2;   // LoadResponse.data
constexpr uint8_t kBatchPieces = (1 << 3) | 2;    // DataBatch.pieces, ChunkBatch.pieces
constexpr uint8_t kPieceNode = (1 << 3) | 0;      // DataPiece.node
constexpr uint8_t kPieceOffset = (2 << 3) | 0;    // DataPiece.offset, ChunkPiece.offset
constexpr uint8_t kPieceData = (3 << 3) | 2;      // DataPiece.data, ChunkPiece.data
constexpr uint8_t kRequestChunks = (3 << 3) | 2;  // SaveRequest.chunks
constexpr uint8_t kPieceDigest = (1 << 3) | 2;    // ChunkPiece.digest

void PutVarint(std::string* out, uint64_t v) {
  uint8_t buf[10];
  const uint8_t* end = CodedOutputStream::WriteVarint64ToArray(v, buf);
  out->append(reinterpret_cast<const char*>(buf), end - buf);
}

// Releases the reference a slice holds on its piece's owner.
void ReleaseOwner(void* user_data) { delete static_cast<std::shared_ptr<const void>*>(user_data); }

// One piece message to encode: its fields before the payload, already
// encoded, and the payload (field 3, bytes) as a slice of its own.
struct Encoded {
  std::string fields;
  grpc::Slice payload;  // empty: no payload field
};

// {outer_tag: {pieces: [{fields, data: payload}, ...]}} with each payload
// as its own slice and the header bytes between them copied into slices.
grpc::ByteBuffer EncodeBatch(uint8_t outer_tag, std::vector<Encoded>& pieces) {
  std::vector<size_t> sizes;
  sizes.reserve(pieces.size());
  size_t batch = 0;
  for (const Encoded& p : pieces) {
    size_t n = p.fields.size();
    if (p.payload.size() != 0) {
      n += 1 + CodedOutputStream::VarintSize64(p.payload.size()) + p.payload.size();
    }
    sizes.push_back(n);
    batch += 1 + CodedOutputStream::VarintSize64(n) + n;
  }
  std::vector<grpc::Slice> slices;
  slices.reserve(2 * pieces.size() + 1);
  std::string head;
  head.push_back(static_cast<char>(outer_tag));
  PutVarint(&head, batch);
  for (size_t i = 0; i < pieces.size(); ++i) {
    Encoded& p = pieces[i];
    head.push_back(static_cast<char>(kBatchPieces));
    PutVarint(&head, sizes[i]);
    head += p.fields;
    if (p.payload.size() == 0) continue;
    head.push_back(static_cast<char>(kPieceData));
    PutVarint(&head, p.payload.size());
    slices.emplace_back(head.data(), head.size());
    head.clear();
    slices.push_back(std::move(p.payload));
  }
  if (!head.empty()) slices.emplace_back(head.data(), head.size());
  return grpc::ByteBuffer(slices.data(), slices.size());
}

}  // namespace

grpc::ByteBuffer EncodeDataBatch(absl::Span<const SharedPiece> pieces) {
  std::vector<Encoded> encoded(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) {
    const SharedPiece& p = pieces[i];
    Encoded& e = encoded[i];
    if (p.node != 0) {
      e.fields.push_back(static_cast<char>(kPieceNode));
      PutVarint(&e.fields, p.node);
    }
    if (p.offset != 0) {
      e.fields.push_back(static_cast<char>(kPieceOffset));
      PutVarint(&e.fields, p.offset);
    }
    if (!p.bytes.empty()) {
      e.payload = grpc::Slice(const_cast<char*>(p.bytes.data()), p.bytes.size(), &ReleaseOwner,
                              new std::shared_ptr<const void>(p.owner));
    }
  }
  return EncodeBatch(kResponseData, encoded);
}

grpc::ByteBuffer EncodeChunkBatch(absl::Span<const ChunkPieceView> pieces) {
  std::vector<Encoded> encoded(pieces.size());
  for (size_t i = 0; i < pieces.size(); ++i) {
    const ChunkPieceView& p = pieces[i];
    Encoded& e = encoded[i];
    if (!p.digest.empty()) {
      e.fields.push_back(static_cast<char>(kPieceDigest));
      PutVarint(&e.fields, p.digest.size());
      e.fields.append(p.digest.data(), p.digest.size());
    }
    if (p.offset != 0) {
      e.fields.push_back(static_cast<char>(kPieceOffset));
      PutVarint(&e.fields, p.offset);
    }
    if (!p.bytes.empty()) e.payload = grpc::Slice(p.bytes.data(), p.bytes.size());
  }
  return EncodeBatch(kRequestChunks, encoded);
}

grpc::ByteBuffer ToByteBuffer(const google::protobuf::MessageLite& message) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  // Cannot fail for a message that is initialized (proto3 always is).
  grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::MessageLite>(message, &buffer,
                                                                                 &own_buffer)
      .IgnoreError();
  return buffer;
}

absl::Status FromByteBuffer(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message,
                            absl::string_view what) {
  grpc::ByteBuffer copy(buffer);  // shares the slices; deserializing consumes it
  grpc::Status status =
      grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::MessageLite>(&copy,
                                                                                       message);
  if (!status.ok()) return absl::InvalidArgumentError(absl::StrCat("malformed ", what));
  return absl::OkStatus();
}

}  // namespace ckpt::rpc
