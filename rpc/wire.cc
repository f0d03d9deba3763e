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
constexpr uint8_t kResponseData = (3 << 3) | 2;  // LoadResponse.data
constexpr uint8_t kBatchPieces = (1 << 3) | 2;   // DataBatch.pieces
constexpr uint8_t kPieceNode = (1 << 3) | 0;     // DataPiece.node
constexpr uint8_t kPieceOffset = (2 << 3) | 0;   // DataPiece.offset
constexpr uint8_t kPieceData = (3 << 3) | 2;     // DataPiece.data

size_t PieceSize(const SharedPiece& p) {
  size_t n = 0;
  if (p.node != 0) n += 1 + CodedOutputStream::VarintSize32(p.node);
  if (p.offset != 0) n += 1 + CodedOutputStream::VarintSize64(p.offset);
  if (!p.bytes.empty()) n += 1 + CodedOutputStream::VarintSize64(p.bytes.size()) + p.bytes.size();
  return n;
}

void PutVarint(std::string* out, uint64_t v) {
  uint8_t buf[10];
  const uint8_t* end = CodedOutputStream::WriteVarint64ToArray(v, buf);
  out->append(reinterpret_cast<const char*>(buf), end - buf);
}

// Releases the reference a slice holds on its piece's owner.
void ReleaseOwner(void* user_data) {
  delete static_cast<std::shared_ptr<const std::string>*>(user_data);
}

}  // namespace

grpc::ByteBuffer EncodeDataBatch(absl::Span<const SharedPiece> pieces) {
  std::vector<size_t> sizes;
  sizes.reserve(pieces.size());
  size_t batch = 0;
  for (const SharedPiece& p : pieces) {
    sizes.push_back(PieceSize(p));
    batch += 1 + CodedOutputStream::VarintSize64(sizes.back()) + sizes.back();
  }
  // Header bytes between the shared payloads are gathered and cut into
  // copied slices; each payload becomes a slice of its owner.
  std::vector<grpc::Slice> slices;
  slices.reserve(2 * pieces.size() + 1);
  std::string head;
  head.push_back(static_cast<char>(kResponseData));
  PutVarint(&head, batch);
  for (size_t i = 0; i < pieces.size(); ++i) {
    const SharedPiece& p = pieces[i];
    head.push_back(static_cast<char>(kBatchPieces));
    PutVarint(&head, sizes[i]);
    if (p.node != 0) {
      head.push_back(static_cast<char>(kPieceNode));
      PutVarint(&head, p.node);
    }
    if (p.offset != 0) {
      head.push_back(static_cast<char>(kPieceOffset));
      PutVarint(&head, p.offset);
    }
    if (p.bytes.empty()) continue;
    head.push_back(static_cast<char>(kPieceData));
    PutVarint(&head, p.bytes.size());
    slices.emplace_back(head.data(), head.size());
    head.clear();
    slices.emplace_back(const_cast<char*>(p.bytes.data()), p.bytes.size(), &ReleaseOwner,
                        new std::shared_ptr<const std::string>(p.owner));
  }
  if (!head.empty()) slices.emplace_back(head.data(), head.size());
  return grpc::ByteBuffer(slices.data(), slices.size());
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
