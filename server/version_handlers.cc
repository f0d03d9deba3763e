// The unary handlers of one checkpoint's versions: ListVersions,
// GetManifest, DeleteVersion, SetTag and DeleteTag.

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "rpc/convert.h"
#include "rpc/protocol.h"
#include "server/service_internal.h"

namespace ckpt::server {

using rpc::kNodeBatchBytes;

grpc::ServerUnaryReactor* CheckpointService::ListVersions(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* raw_request,
                                                          grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::ListVersionsRequest, v1::ListVersionsResponse>(
      context, raw_request, raw_response, "ListVersions",
      [this](const Principal& principal, CallRecord&, const v1::ListVersionsRequest& request,
             v1::ListVersionsResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, request.name()));
        CKPT_ASSIGN_OR_RETURN(uint64_t after, ParsePageToken(request.page_token()));
        const uint32_t limit =
            request.page_size() == 0 ? kMaxListPage : std::min(request.page_size(), kMaxListPage);
        CKPT_ASSIGN_OR_RETURN(auto versions,
                              store_->ListVersions(request.name(), after, limit + 1));
        // Pages stop at a size that always fits a message: one version is
        // bounded (metadata and tag limits), many are not.
        size_t bytes = 0;
        size_t i = 0;
        for (; i < versions.size() && i < limit && bytes < 3 * kNodeBatchBytes; ++i) {
          v1::VersionInfo* out = response->add_versions();
          rpc::ToProto(versions[i], out);
          bytes += out->ByteSizeLong() + 4;
        }
        if (i < versions.size())
          response->set_next_page_token(absl::StrCat(versions[i - 1].version));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::GetManifest(grpc::CallbackServerContext* context,
                                                         const grpc::ByteBuffer* raw_request,
                                                         grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::GetManifestRequest, v1::GetManifestResponse>(
      context, raw_request, raw_response, "GetManifest",
      [this](const Principal& principal, CallRecord& record, const v1::GetManifestRequest& request,
             v1::GetManifestResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, request.name()));
        CKPT_ASSIGN_OR_RETURN(uint64_t first, ParsePageToken(request.page_token()));
        storage::VersionSelector selector{request.version(), request.tag()};
        CKPT_ASSIGN_OR_RETURN(VersionInfo version, store_->GetVersion(request.name(), selector));
        record.set_version(version.version);
        CKPT_ASSIGN_OR_RETURN(Tree tree, store_->GetTree(version.name, version.version));
        if (first > tree.size()) {
          return absl::InvalidArgumentError(
              absl::StrCat("page_token ", first, " past the ", tree.size(), " nodes"));
        }
        const uint32_t limit = request.page_size() == 0
                                   ? kMaxManifestPage
                                   : std::min(request.page_size(), kMaxManifestPage);
        rpc::ToProto(version, response->mutable_version());
        response->set_first_node(first);
        size_t bytes = 0;
        size_t i = first;
        for (; i < tree.size() && i - first < limit && bytes < 3 * kNodeBatchBytes; ++i) {
          v1::Node* node = response->add_nodes();
          rpc::ToProto(tree[i], node);
          bytes += node->ByteSizeLong() + 4;
        }
        if (i < tree.size()) response->set_next_page_token(absl::StrCat(i));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::DeleteVersion(grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer* raw_request,
                                                           grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::DeleteVersionRequest, v1::DeleteVersionResponse>(
      context, raw_request, raw_response, "DeleteVersion",
      [this](const Principal& principal, CallRecord& record,
             const v1::DeleteVersionRequest& request,
             v1::DeleteVersionResponse* response) -> absl::Status {
        record.set_version(request.version());
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kAdmin, request.name()));
        if (request.version() == 0) {
          return absl::InvalidArgumentError("DeleteVersion needs a version number");
        }
        CKPT_ASSIGN_OR_RETURN(
            uint64_t released,
            store_->DeleteVersion(request.name(), request.version(), request.force()));
        response->set_released_chunks(released);
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* CheckpointService::SetTag(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* raw_request,
                                                    grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::SetTagRequest, v1::SetTagResponse>(
      context, raw_request, raw_response, "SetTag",
      [this](const Principal& principal, CallRecord& record, const v1::SetTagRequest& request,
             v1::SetTagResponse* response) -> absl::Status {
        record.set_version(request.version());
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kWrite, request.name()));
        if (request.version() == 0) return absl::InvalidArgumentError("SetTag needs a version");
        return store_->SetTag(request.name(), request.tag(), request.version());
      });
}

grpc::ServerUnaryReactor* CheckpointService::DeleteTag(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* raw_request,
                                                       grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::DeleteTagRequest, v1::DeleteTagResponse>(
      context, raw_request, raw_response, "DeleteTag",
      [this](const Principal& principal, CallRecord&, const v1::DeleteTagRequest& request,
             v1::DeleteTagResponse* response) -> absl::Status {
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kWrite, request.name()));
        return store_->DeleteTag(request.name(), request.tag());
      });
}

}  // namespace ckpt::server
