#ifndef CKPT_RPC_PROTOCOL_H_
#define CKPT_RPC_PROTOCOL_H_

// Sizes of the ckpt.v1 wire protocol that both ends use (proto/ckpt/v1/
// checkpoint.proto says what each message holds).

#include <cstddef>
#include <cstdint>

namespace ckpt::rpc {

/// Largest piece of data in one DataPiece, and of chunk data in one
/// ChunkPiece unless the chunk goes whole (SendsWholeChunks); batches of
/// small pieces are filled up to it. 1 MiB messages stream well over
/// loopback; a whole 4 MiB chunk in one message saves the server a copy.
inline constexpr size_t kPieceBytes = size_t{1} << 20;

/// What a message keeps for everything but chunk data (digests, offsets,
/// framing): a server accepts messages of at least kPieceBytes plus this.
inline constexpr size_t kMessageHeadroom = size_t{64} << 10;

/// A bound on a ChunkPiece's bytes besides its data (tags, lengths, digest,
/// offset): messages of small pieces count it against kPieceBytes, so that
/// however many pieces share a message, it stays within kPieceBytes.
inline constexpr size_t kPieceFramingBytes = 40;

/// The largest message a client sends: a 4 MiB chunk and its headroom.
inline constexpr size_t kMaxRequestBytes = (size_t{4} << 20) + kMessageHeadroom;

/// Whether a client sends each chunk too large for a message of kPieceBytes
/// whole, alone in one Save message, to a server that accepts messages of up to
/// `max_message_bytes` (SaveAccepted): when a chunk of `chunk_size` and its
/// headroom fit. The server then stores the bytes it received without
/// assembling pieces. Otherwise, and always for smaller chunks, chunk data
/// travels in messages of at most kPieceBytes, framing included.
inline bool SendsWholeChunks(uint64_t max_message_bytes, uint64_t chunk_size) {
  return chunk_size + kMessageHeadroom <= kMaxRequestBytes &&
         chunk_size + kMessageHeadroom <= max_message_bytes;
}

/// Node batches (Save's NodeBatch from the client, Load's and GetManifest's
/// from the server) are filled up to this many encoded bytes...
inline constexpr size_t kNodeBatchBytes = size_t{1} << 20;
/// ... or this many nodes, whichever comes first.
inline constexpr size_t kMaxBatchNodes = 10000;

/// Every response message is at most 4 MiB; a client accepts a little more.
inline constexpr int kMaxResponseBytes = (4 << 20) + (256 << 10);

}  // namespace ckpt::rpc

#endif  // CKPT_RPC_PROTOCOL_H_
