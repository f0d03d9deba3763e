#include "rpc/wire.h"

#include <algorithm>
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

namespace {

// Reads a message's bytes across its slices.
class SliceReader {
 public:
  explicit SliceReader(const std::vector<grpc::Slice>& slices) : slices_(slices) { Settle(); }

  uint64_t consumed() const { return consumed_; }
  bool at_end() const { return slice_ == slices_.size(); }

  bool Byte(uint8_t* out) {
    if (at_end()) return false;
    *out = slices_[slice_].begin()[at_];
    Advance(1);
    return true;
  }

  // A varint in its shortest encoding (a longer one is left to protobuf,
  // which refuses some), of at most 10 bytes, whose value fits 64 bits.
  bool Varint(uint64_t* out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!Byte(&b)) return false;
      if (shift == 63 && b > 1) return false;
      value |= uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) {
        if (shift > 0 && b == 0) return false;
        *out = value;
        return true;
      }
    }
    return false;
  }

  // A length prefix: a varint below 2^31, as protobuf accepts.
  bool Length(uint64_t* out) { return Varint(out) && *out <= INT32_MAX; }

  // The next n bytes, where they lie, appended to *parts.
  bool Take(uint64_t n, std::vector<absl::string_view>* parts) {
    while (n > 0) {
      if (at_end()) return false;
      const grpc::Slice& slice = slices_[slice_];
      const size_t take = static_cast<size_t>(std::min<uint64_t>(n, slice.size() - at_));
      parts->emplace_back(reinterpret_cast<const char*>(slice.begin()) + at_, take);
      Advance(take);
      n -= take;
    }
    return true;
  }

 private:
  void Advance(size_t n) {
    at_ += n;
    consumed_ += n;
    Settle();
  }
  // Skips finished (and empty) slices.
  void Settle() {
    while (slice_ < slices_.size() && at_ == slices_[slice_].size()) {
      ++slice_;
      at_ = 0;
    }
  }

  const std::vector<grpc::Slice>& slices_;
  size_t slice_ = 0;
  size_t at_ = 0;
  uint64_t consumed_ = 0;
};

}  // namespace

bool DecodeDataBatch(const grpc::ByteBuffer& buffer, DataBatchView* out) {
  out->pieces.clear();
  out->slices.clear();
  if (!buffer.Dump(&out->slices).ok()) return false;
  SliceReader in(out->slices);
  uint8_t tag;
  uint64_t batch;
  if (!in.Byte(&tag) || tag != kResponseData || !in.Length(&batch)) return false;
  const uint64_t batch_end = in.consumed() + batch;
  while (in.consumed() < batch_end) {
    uint64_t length;
    if (!in.Byte(&tag) || tag != kBatchPieces || !in.Length(&length)) return false;
    const uint64_t piece_end = in.consumed() + length;
    ReceivedPiece& piece = out->pieces.emplace_back();
    uint8_t last = 0;  // fields in increasing order, each at most once
    while (in.consumed() < piece_end) {
      if (!in.Byte(&tag) || tag <= last) return false;
      last = tag;
      uint64_t value;
      if (!(tag == kPieceData ? in.Length(&value) : in.Varint(&value))) return false;
      if (tag == kPieceNode) {
        if (value > UINT32_MAX) return false;
        piece.node = static_cast<uint32_t>(value);
      } else if (tag == kPieceOffset) {
        piece.offset = value;
      } else if (tag == kPieceData) {
        if (value > piece_end - std::min(piece_end, in.consumed())) return false;
        piece.size = value;
        if (!in.Take(value, &piece.parts)) return false;
      } else {
        return false;
      }
    }
    if (in.consumed() != piece_end) return false;
  }
  return in.consumed() == batch_end && in.at_end();
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
