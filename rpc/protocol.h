#ifndef CKPT_RPC_PROTOCOL_H_
#define CKPT_RPC_PROTOCOL_H_

// Sizes of the ckpt.v1 wire protocol that both ends use (proto/ckpt/v1/
// checkpoint.proto says what each message holds).

#include <cstddef>

namespace ckpt::rpc {

/// Largest piece of chunk data in one DataPiece or ChunkPiece; batches of
/// small pieces are filled up to it. 1 MiB messages stream best over loopback.
inline constexpr size_t kPieceBytes = size_t{1} << 20;

/// Node batches (Save's NodeBatch from the client, Load's and GetManifest's
/// from the server) are filled up to this many encoded bytes...
inline constexpr size_t kNodeBatchBytes = size_t{1} << 20;
/// ... or this many nodes, whichever comes first.
inline constexpr size_t kMaxBatchNodes = 10000;

/// Every response message is at most 4 MiB; a client accepts a little more.
inline constexpr int kMaxResponseBytes = (4 << 20) + (256 << 10);

}  // namespace ckpt::rpc

#endif  // CKPT_RPC_PROTOCOL_H_
