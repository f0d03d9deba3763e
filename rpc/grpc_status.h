#ifndef CKPT_RPC_GRPC_STATUS_H_
#define CKPT_RPC_GRPC_STATUS_H_

// The one place where absl::Status and grpc::Status meet. Codes map 1:1.

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace ckpt::rpc {

/// Same code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);
/// Same code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace ckpt::rpc

#endif  // CKPT_RPC_GRPC_STATUS_H_
