// rpc/wire: Load's zero-copy data messages are exactly the bytes protobuf
// would produce, parse back as LoadResponse, and keep their chunks alive.

#include "rpc/wire.h"

#include <gtest/gtest.h>

#include <vector>

#include "grpcpp/support/slice.h"

namespace ckpt::rpc {
namespace {

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

TEST(WireTest, DataBatchIsByteIdenticalToProtobuf) {
  auto a = std::make_shared<const std::string>(std::string(300000, 'a') + "tail");
  auto b = std::make_shared<const std::string>("xyz");
  std::vector<SharedPiece> pieces = {
      {0, 0, a, absl::string_view(*a).substr(0, 200000)},        // default node and offset
      {7, 200000, a, absl::string_view(*a).substr(200000)},      // rest of the same chunk
      {300, (uint64_t{1} << 40) + 5, b, absl::string_view(*b)},  // multi-byte varints
      {9, 0, b, absl::string_view()},                            // empty data
  };
  v1::LoadResponse expected;
  for (const SharedPiece& p : pieces) {
    v1::DataPiece* piece = expected.mutable_data()->add_pieces();
    piece->set_node(p.node);
    piece->set_offset(p.offset);
    piece->set_data(std::string(p.bytes));
  }
  grpc::ByteBuffer encoded = EncodeDataBatch(pieces);
  EXPECT_EQ(Flatten(encoded), expected.SerializeAsString());

  v1::LoadResponse parsed;
  ASSERT_TRUE(FromByteBuffer(encoded, &parsed, "LoadResponse").ok());
  ASSERT_EQ(parsed.data().pieces_size(), 4);
  EXPECT_EQ(parsed.data().pieces(1).node(), 7u);
  EXPECT_EQ(parsed.data().pieces(1).offset(), 200000u);
  EXPECT_EQ(parsed.data().pieces(1).data(), std::string(100000, 'a') + "tail");
  EXPECT_EQ(parsed.data().pieces(2).offset(), (uint64_t{1} << 40) + 5);
}

TEST(WireTest, BufferKeepsTheChunksAliveUntilReleased) {
  auto chunk = std::make_shared<const std::string>(std::string(1 << 20, 'q'));
  std::weak_ptr<const std::string> watch = chunk;
  grpc::ByteBuffer encoded;
  {
    std::vector<SharedPiece> pieces = {{1, 0, chunk, absl::string_view(*chunk)}};
    encoded = EncodeDataBatch(pieces);
    chunk.reset();
  }
  EXPECT_FALSE(watch.expired());  // only the buffer holds it now
  v1::LoadResponse parsed;
  ASSERT_TRUE(FromByteBuffer(encoded, &parsed, "LoadResponse").ok());
  EXPECT_EQ(parsed.data().pieces(0).data(), std::string(1 << 20, 'q'));
  encoded.Clear();
  EXPECT_TRUE(watch.expired());
}

// Save's chunk messages are what serializing the SaveRequest would give,
// and own their bytes: changing the source after encoding changes nothing.
TEST(WireTest, ChunkBatchIsTheSerializedSaveRequestAndOwnsItsBytes) {
  const std::string digest(16, '\x07');
  std::string big(300000, 'b');
  const std::vector<ChunkPieceView> pieces = {
      {digest, 0, big},
      {digest, (uint64_t{1} << 33) + 1, "x"},
      {"", 5, "scratch"},
      {digest, 0, ""},
  };
  v1::SaveRequest expected;
  for (const ChunkPieceView& p : pieces) {
    v1::ChunkPiece* piece = expected.mutable_chunks()->add_pieces();
    piece->set_digest(std::string(p.digest));
    piece->set_offset(p.offset);
    piece->set_data(std::string(p.bytes));
  }
  grpc::ByteBuffer encoded = EncodeChunkBatch(pieces);
  EXPECT_EQ(Flatten(encoded), expected.SerializeAsString());

  big.assign(big.size(), 'B');
  v1::SaveRequest parsed;
  ASSERT_TRUE(FromByteBuffer(encoded, &parsed, "SaveRequest").ok());
  ASSERT_EQ(parsed.chunks().pieces_size(), 4);
  EXPECT_EQ(parsed.chunks().pieces(0).data(), std::string(300000, 'b'));
  EXPECT_EQ(parsed.chunks().pieces(0).digest(), digest);
  EXPECT_EQ(parsed.chunks().pieces(1).offset(), (uint64_t{1} << 33) + 1);
  EXPECT_EQ(parsed.chunks().pieces(2).data(), "scratch");
  EXPECT_EQ(parsed.chunks().pieces(2).digest(), "");
  EXPECT_EQ(parsed.chunks().pieces(3).data(), "");
}

TEST(WireTest, MessagesRoundTripAndGarbageIsInvalidArgument) {
  v1::LoadRequest request;
  request.set_name("team/model");
  request.add_patterns("layer.*");
  v1::LoadRequest back;
  ASSERT_TRUE(FromByteBuffer(ToByteBuffer(request), &back, "LoadRequest").ok());
  EXPECT_EQ(back.name(), "team/model");
  EXPECT_EQ(back.patterns(0), "layer.*");

  const std::string garbage = "\x0a\xff\xff\xff\xff\x0f";  // field 1, length past the end
  grpc::Slice slice(garbage.data(), garbage.size());
  grpc::ByteBuffer bad(&slice, 1);
  absl::Status status = FromByteBuffer(bad, &back, "LoadRequest");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "malformed LoadRequest");
}

}  // namespace
}  // namespace ckpt::rpc
