#ifndef CKPT_RPC_WIRE_H_
#define CKPT_RPC_WIRE_H_

// Messages as grpc::ByteBuffer, for methods called or registered raw: Load's
// data messages reference chunk bytes, and Save's chunk messages tensor
// bytes, instead of copying them into a protobuf message and again into
// gRPC's buffer. Internal to server/ and client/.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "ckpt/v1/checkpoint.pb.h"
#include "grpcpp/support/byte_buffer.h"

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

/// One ChunkPiece whose bytes are borrowed: they must stay valid and
/// unchanged until the call that sends the message has finished (a save's
/// tensors do). `copy` copies them instead (bytes in a reused buffer).
struct BorrowedPiece {
  absl::string_view digest;
  uint64_t offset = 0;
  absl::string_view bytes;
  bool copy = false;
};

/// Counts the borrowed slices of EncodeChunkBatch that gRPC still holds: a
/// call whose messages borrow memory must not return (letting the caller
/// free it) before WaitUntilReleased() does. gRPC may hold a slice past
/// the write that sent it, until its transport has written or dropped it.
class BorrowedSlices {
 public:
  BorrowedSlices() = default;
  BorrowedSlices(const BorrowedSlices&) = delete;
  BorrowedSlices& operator=(const BorrowedSlices&) = delete;
  ~BorrowedSlices() { WaitUntilReleased(); }

  /// Returns once gRPC holds none of the slices counted here.
  void WaitUntilReleased();

  // For EncodeChunkBatch: one more slice held.
  void Acquire();
  // The slices' destroy callback.
  static void Release(void* self);

 private:
  std::mutex mu_;
  std::condition_variable released_;
  size_t held_ = 0;
};

/// SaveRequest{chunks: ChunkBatch{pieces}} as gRPC message bytes, identical
/// to what serializing that message would produce; each piece's bytes are
/// referenced, not copied (unless it asks to be, or is under
/// kCopyPiecesBelow bytes), and counted in `borrowed` until gRPC lets go.
grpc::ByteBuffer EncodeChunkBatch(absl::Span<const BorrowedPiece> pieces, BorrowedSlices* borrowed);

/// Pieces smaller than this are copied (a slice each would cost more).
inline constexpr size_t kCopyPiecesBelow = 4096;

/// Serializes `message` (copying) into a ByteBuffer.
grpc::ByteBuffer ToByteBuffer(const google::protobuf::MessageLite& message);

/// Parses `buffer` into `message`. InvalidArgument("malformed <what>") if the
/// bytes are not a valid message.
absl::Status FromByteBuffer(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message,
                            absl::string_view what);

}  // namespace ckpt::rpc

#endif  // CKPT_RPC_WIRE_H_
