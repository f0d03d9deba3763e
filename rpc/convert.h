#ifndef CKPT_RPC_CONVERT_H_
#define CKPT_RPC_CONVERT_H_

// ckpt.v1 protobuf messages <-> common value types. Internal to server/ and
// client/: public APIs use the common types only.

#include "absl/status/statusor.h"
#include "ckpt/v1/checkpoint.pb.h"
#include "common/retention.h"
#include "common/types.h"

namespace ckpt::rpc {

/// Converts a wire node. InvalidArgument for a node with no value, an
/// unknown dtype, or a digest that is not 16 bytes.
absl::StatusOr<Node> FromProto(const v1::Node& proto);
void ToProto(const Node& node, v1::Node* proto);

VersionInfo FromProto(const v1::VersionInfo& proto);
void ToProto(const VersionInfo& info, v1::VersionInfo* proto);

RetentionPolicy FromProto(const v1::RetentionPolicy& proto);
void ToProto(const RetentionPolicy& policy, v1::RetentionPolicy* proto);

}  // namespace ckpt::rpc

#endif  // CKPT_RPC_CONVERT_H_
