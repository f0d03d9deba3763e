#ifndef CKPT_RPC_CONVERT_H_
#define CKPT_RPC_CONVERT_H_

// ckpt.v1 protobuf messages <-> common value types. Internal to server/ and
// client/: public APIs use the common types only.

#include "absl/status/statusor.h"
#include "ckpt/v1/checkpoint.pb.h"
#include "common/retention.h"
#include "common/slice.h"
#include "common/tensor_diff.h"
#include "common/types.h"

namespace ckpt::rpc {

/// Converts a wire node. InvalidArgument for a node with no value, an
/// unknown dtype, or a digest that is not 16 bytes.
absl::StatusOr<Node> FromProto(const v1::Node& proto);
void ToProto(const Node& node, v1::Node* proto);

TensorStats FromProto(const v1::TensorStats& proto);
void ToProto(const TensorStats& stats, v1::TensorStats* proto);

VersionInfo FromProto(const v1::VersionInfo& proto);
void ToProto(const VersionInfo& info, v1::VersionInfo* proto);

RetentionPolicy FromProto(const v1::RetentionPolicy& proto);
void ToProto(const RetentionPolicy& policy, v1::RetentionPolicy* proto);

/// Milliseconds since the Unix epoch <-> google.protobuf.Timestamp (times
/// before the epoch round down to the millisecond below).
int64_t TimestampFromProto(const google::protobuf::Timestamp& proto);
void TimestampToProto(int64_t ms, google::protobuf::Timestamp* proto);

CheckpointSummary FromProto(const v1::CheckpointSummary& proto);
void ToProto(const CheckpointSummary& summary, v1::CheckpointSummary* proto);

TensorSlice FromProto(const v1::TensorSlice& proto);
void ToProto(const TensorSlice& slice, v1::TensorSlice* proto);

/// The store's totals. StorageStats' dedup_ratio is ServerInfo's, not
/// StoreStats': ToProto leaves it unset.
StoreStats FromProto(const v1::StorageStats& proto);
void ToProto(const StoreStats& stats, v1::StorageStats* proto);

ServerInfo FromProto(const v1::GetServerInfoResponse& proto);
void ToProto(const ServerInfo& info, v1::GetServerInfoResponse* proto);

NamespaceUsage FromProto(const v1::GetUsageResponse& proto);
void ToProto(const NamespaceUsage& usage, v1::GetUsageResponse* proto);

GcResult FromProto(const v1::GarbageCollectResponse& proto);
void ToProto(const GcResult& gc, v1::GarbageCollectResponse* proto);

VersionDiff FromProto(const v1::DiffResponse& proto);
void ToProto(const VersionDiff& diff, v1::DiffResponse* proto);

BackupInfo FromProto(const v1::BackupResponse& proto);
void ToProto(const BackupInfo& backup, v1::BackupResponse* proto);

}  // namespace ckpt::rpc

#endif  // CKPT_RPC_CONVERT_H_
