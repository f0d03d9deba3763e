// rpc/wire: Load's zero-copy data messages are exactly the bytes protobuf
// would produce, parse back as LoadResponse, and keep their chunks alive.

#include "rpc/wire.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
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

// `bytes` as a buffer of slices cut at `cuts` (increasing offsets).
grpc::ByteBuffer Cut(const std::string& bytes, const std::vector<size_t>& cuts) {
  std::vector<grpc::Slice> slices;
  size_t from = 0;
  for (size_t to : cuts) {
    slices.emplace_back(bytes.data() + from, to - from);
    from = to;
  }
  slices.emplace_back(bytes.data() + from, bytes.size() - from);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// What a decoded piece says, its parts joined, as "node/offset/data".
std::vector<std::string> Describe(const DataBatchView& view) {
  std::vector<std::string> out;
  for (const ReceivedPiece& p : view.pieces) {
    std::string data;
    for (absl::string_view part : p.parts) data.append(part.data(), part.size());
    EXPECT_EQ(data.size(), p.size);
    out.push_back(std::to_string(p.node) + "/" + std::to_string(p.offset) + "/" + data);
  }
  return out;
}
std::vector<std::string> Describe(const v1::LoadResponse& response) {
  std::vector<std::string> out;
  for (const v1::DataPiece& p : response.data().pieces()) {
    out.push_back(std::to_string(p.node()) + "/" + std::to_string(p.offset()) + "/" + p.data());
  }
  return out;
}

v1::LoadResponse SomePieces() {
  v1::LoadResponse response;
  auto add = [&](uint32_t node, uint64_t offset, std::string data) {
    v1::DataPiece* piece = response.mutable_data()->add_pieces();
    piece->set_node(node);
    piece->set_offset(offset);
    piece->set_data(std::move(data));
  };
  add(0, 0, "abc");
  add(3, 200, std::string(300, 'z'));
  add(3, 500, "");
  add(70000, (uint64_t{1} << 40) + 5, "tail");
  return response;
}

// The client reads data messages in place, across however gRPC cut them
// into slices, and gets what protobuf would parse.
TEST(WireTest, DecodeDataBatchReadsThePiecesAcrossSlices) {
  const v1::LoadResponse response = SomePieces();
  const std::string bytes = response.SerializeAsString();
  const std::vector<std::string> want = Describe(response);
  DataBatchView view;
  for (size_t cut = 0; cut <= bytes.size(); ++cut) {
    SCOPED_TRACE(cut);
    ASSERT_TRUE(DecodeDataBatch(Cut(bytes, {cut}), &view));
    EXPECT_EQ(Describe(view), want);
  }
  std::vector<size_t> every_byte;
  for (size_t i = 1; i < bytes.size(); ++i) every_byte.push_back(i);
  ASSERT_TRUE(DecodeDataBatch(Cut(bytes, every_byte), &view));
  EXPECT_EQ(Describe(view), want);
  EXPECT_GT(view.pieces[1].parts.size(), 1u);  // across slices

  // Zero-copy messages of the server: the pieces lie in the chunks.
  auto chunk = std::make_shared<const std::string>(std::string(100000, 'c') + "d");
  const std::vector<SharedPiece> shared = {{2, 0, chunk, *chunk}, {5, 9, chunk, "d"}};
  ASSERT_TRUE(DecodeDataBatch(EncodeDataBatch(shared), &view));
  ASSERT_EQ(view.pieces.size(), 2u);
  ASSERT_EQ(view.pieces[0].parts.size(), 1u);
  EXPECT_EQ(view.pieces[0].parts[0].data(), chunk->data());
  EXPECT_EQ(view.pieces[1].size, 1u);
  EXPECT_EQ(view.pieces[1].offset, 9u);
}

// Anything but the form the server writes is left to protobuf: other
// messages, other encodings of the same pieces, broken bytes.
TEST(WireTest, DecodeDataBatchLeavesOtherEncodingsToProtobuf) {
  DataBatchView view;
  v1::LoadResponse header;
  header.mutable_header()->set_num_nodes(3);
  v1::LoadResponse nodes;
  nodes.mutable_nodes()->add_nodes()->set_str_key("a");
  const std::string piece_fields = std::string("\x10\x05", 2) + "\x08\x02" + "\x1a\x01x";
  const std::vector<std::pair<const char*, std::string>> refused = {
      {"empty", ""},
      {"header", header.SerializeAsString()},
      {"nodes", nodes.SerializeAsString()},
      {"offset before node", std::string("\x1a\x09\x0a\x07", 4) + piece_fields},
      {"node twice", std::string("\x1a\x06\x0a\x04\x08\x01\x08\x02", 8)},
      {"unknown piece field", std::string("\x1a\x04\x0a\x02\x20\x01", 6)},
      {"unknown batch field", std::string("\x1a\x02\x10\x01", 4)},
      {"node past 32 bits", std::string("\x1a\x08\x0a\x06\x08\x80\x80\x80\x80\x10", 10)},
      {"two data fields", SomePieces().SerializeAsString() + SomePieces().SerializeAsString()},
      {"data past the piece", std::string("\x1a\x05\x0a\x03\x1a\x05x", 7)},
      {"padded length", std::string("\x1a\x84\x00\x0a\x02\x08\x01", 7)},
      {"padded node", std::string("\x1a\x05\x0a\x03\x08\x81\x00", 7)},
      {"truncated", SomePieces().SerializeAsString().substr(0, 40)},
  };
  for (const auto& [what, bytes] : refused) {
    SCOPED_TRACE(what);
    EXPECT_FALSE(DecodeDataBatch(Cut(bytes, {}), &view));
  }
  // Protobuf reads "offset before node" and "two data fields" (the batches
  // merge): the client still loads them, through protobuf.
  v1::LoadResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(refused[3].second));
  EXPECT_EQ(Describe(parsed), std::vector<std::string>{"2/5/x"});
}

// Bytes flipped at random: whenever the in-place reader accepts a message,
// protobuf parses it to the same pieces.
TEST(WireTest, DecodeDataBatchAgreesWithProtobufOnDamagedMessages) {
  const std::string good = SomePieces().SerializeAsString();
  std::mt19937 random(7);
  int accepted = 0;
  for (int round = 0; round < 5000; ++round) {
    std::string bytes = good;
    const int flips = 1 + static_cast<int>(random() % 3);
    for (int f = 0; f < flips; ++f) bytes[random() % bytes.size()] = static_cast<char>(random());
    if (random() % 4 == 0) bytes.resize(random() % bytes.size());
    DataBatchView view;
    if (!DecodeDataBatch(Cut(bytes, {bytes.size() / 2}), &view)) continue;
    ++accepted;
    v1::LoadResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(bytes)) << round;
    EXPECT_EQ(Describe(view), Describe(parsed)) << round;
  }
  EXPECT_GT(accepted, 500);
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
