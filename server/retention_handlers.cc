// The retention handlers: SetRetention, GetRetention and Prune.

#include <vector>

#include "common/retention.h"
#include "rpc/convert.h"
#include "server/service_internal.h"

namespace ckpt::server {

grpc::ServerUnaryReactor* CheckpointService::SetRetention(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* raw_request,
                                                          grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::SetRetentionRequest, v1::SetRetentionResponse>(
      context, raw_request, raw_response, "SetRetention",
      [this](const Principal& principal, CallRecord&, const v1::SetRetentionRequest& request,
             v1::SetRetentionResponse* response) -> absl::Status {
        // Deleting versions is an admin's right; so is choosing which go.
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kAdmin, request.name()));
        CKPT_RETURN_IF_ERROR(
            store_->SetRetention(request.name(), rpc::FromProto(request.policy())));
        auto would = store_->Prune(request.name(), /*dry_run=*/true);
        if (!would.ok() && would.status().code() != absl::StatusCode::kNotFound) {
          return would.status();
        }
        if (would.ok()) response->mutable_would_delete()->Add(would->begin(), would->end());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::GetRetention(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* raw_request,
                                                          grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::GetRetentionRequest, v1::GetRetentionResponse>(
      context, raw_request, raw_response, "GetRetention",
      [this](const Principal& principal, CallRecord&, const v1::GetRetentionRequest& request,
             v1::GetRetentionResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, request.name()));
        CKPT_ASSIGN_OR_RETURN(RetentionPolicy policy, store_->GetRetention(request.name()));
        if (policy.enabled()) rpc::ToProto(policy, response->mutable_policy());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::Prune(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* raw_request,
                                                   grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::PruneRequest, v1::PruneResponse>(
      context, raw_request, raw_response, "Prune",
      [this](const Principal& principal, CallRecord&, const v1::PruneRequest& request,
             v1::PruneResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kAdmin, request.name()));
        CKPT_ASSIGN_OR_RETURN(std::vector<uint64_t> deleted,
                              store_->Prune(request.name(), request.dry_run()));
        response->mutable_deleted()->Add(deleted.begin(), deleted.end());
        return absl::OkStatus();
      });
}

}  // namespace ckpt::server
