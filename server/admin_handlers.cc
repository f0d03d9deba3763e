// The store-wide unary handlers: GetServerInfo, GetUsage, GarbageCollect
// and Backup.

#include <algorithm>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "rpc/convert.h"
#include "server/service_internal.h"

namespace ckpt::server {

grpc::ServerUnaryReactor* CheckpointService::GetServerInfo(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* raw_request,
                                                           grpc::ByteBuffer* raw_response) {
  // Any valid token: store-wide totals, no names.
  return RunUnary<v1::GetServerInfoRequest, v1::GetServerInfoResponse>(
      context, raw_request, raw_response, "GetServerInfo",
      [this](const Principal&, CallRecord&, const v1::GetServerInfoRequest& request,
             v1::GetServerInfoResponse* response) -> absl::Status {
        CKPT_ASSIGN_OR_RETURN(storage::StoreStats stats, store_->Stats());
        ServerInfo info;
        info.server_version = CKPT_VERSION;
        info.chunk_size = options_.chunk_size;
        info.max_message_bytes = options_.max_message_bytes;
        info.stats = stats;
        info.dedup_ratio = stats.stored_bytes ? static_cast<double>(stats.logical_bytes) /
                                                    static_cast<double>(stats.stored_bytes)
                                              : 1.0;
        rpc::ToProto(info, response);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::GetUsage(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* raw_request,
                                                      grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::GetUsageRequest, v1::GetUsageResponse>(
      context, raw_request, raw_response, "GetUsage",
      [this](const Principal& principal, CallRecord&, const v1::GetUsageRequest& request,
             v1::GetUsageResponse* response) -> absl::Status {
        // "team", "team/" and "team/run-1/model" all mean the namespace team.
        const absl::string_view ns =
            absl::string_view(request.namespace_()).substr(0, request.namespace_().find('/'));
        if (ns.empty()) {
          return absl::InvalidArgumentError("GetUsage needs a namespace (e.g. \"team\")");
        }
        // The whole namespace's bytes: a right on part of it is not enough.
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, ns));
        NamespaceUsage usage;
        usage.ns = std::string(ns);
        usage.used_bytes = store_->NamespaceBytes(ns);
        usage.quota_bytes = storage::NamespaceQuota(options_.store, ns);
        rpc::ToProto(usage, response);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::GarbageCollect(grpc::CallbackServerContext* context,
                                                            const grpc::ByteBuffer* raw_request,
                                                            grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::GarbageCollectRequest, v1::GarbageCollectResponse>(
      context, raw_request, raw_response, "GarbageCollect",
      [this](const Principal& principal, CallRecord&, const v1::GarbageCollectRequest& request,
             v1::GarbageCollectResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(principal.CheckGlobal(Right::kAdmin, "collect garbage"));
        CKPT_ASSIGN_OR_RETURN(storage::GcResult gc, store_->CollectGarbage());
        rpc::ToProto(gc, response);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::Backup(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* raw_request,
                                                    grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::BackupRequest, v1::BackupResponse>(
      context, raw_request, raw_response, "Backup",
      [this](const Principal& principal, CallRecord&, const v1::BackupRequest& request,
             v1::BackupResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(principal.CheckGlobal(Right::kAdmin, "back up the store"));
        if (options_.backup_dir.empty()) {
          return absl::FailedPreconditionError(
              "backups are off on this server: start ckpt-server with --backup-dir DIR");
        }
        std::string name = request.name();
        if (name.empty()) {
          name = absl::FormatTime("ckpt-backup-%Y%m%dT%H%M%SZ", absl::Now(), absl::UTCTimeZone());
        }
        const bool valid = name.size() <= 128 && name != "." && name != ".." &&
                           std::all_of(name.begin(), name.end(), [](char c) {
                             return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
                                    c == '.' || c == '_' || c == '-';
                           });
        if (!valid) {
          return absl::InvalidArgumentError(absl::StrCat(
              "backup name '", Excerpt(name),
              "' is not valid: letters, digits, '.', '_' and '-', at most 128 characters"));
        }
        CKPT_ASSIGN_OR_RETURN(BackupInfo backup, store_->Backup(options_.backup_dir + "/" + name));
        rpc::ToProto(backup, response);
        return absl::OkStatus();
      });
}

}  // namespace ckpt::server
