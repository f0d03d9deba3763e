#ifndef CKPT_RPC_GRPC_STATUS_H_
#define CKPT_RPC_GRPC_STATUS_H_

// The one place where absl::Status and grpc::Status meet. Codes map 1:1.

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace ckpt::rpc {

/// Longest status message sent: gRPC carries it in a trailer, and a trailer
/// past the peer's metadata limit (8 KiB by default) turns any status into
/// RESOURCE_EXHAUSTED "received metadata size exceeds limit".
inline constexpr size_t kMaxStatusMessage = 4096;

/// Same code and message; a message longer than kMaxStatusMessage is cut,
/// saying how long it was.
grpc::Status ToGrpcStatus(const absl::Status& status);
/// Same code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace ckpt::rpc

#endif  // CKPT_RPC_GRPC_STATUS_H_
