// ListCheckpoints: the names under a prefix, scoped to what the caller may
// read (a token with grants on parts of the prefix lists the union of them).

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "rpc/convert.h"
#include "server/queries.h"
#include "server/service_internal.h"

namespace ckpt::server {

absl::StatusOr<CheckpointPage> ListReadableCheckpoints(storage::Store* store,
                                                       const Principal& principal,
                                                       absl::string_view prefix,
                                                       absl::string_view start_after,
                                                       size_t limit) {
  CKPT_RETURN_IF_ERROR(ValidatePrefix(prefix));
  std::vector<CheckpointSummary> list;
  std::optional<std::vector<std::string>> scopes = principal.ReadableUnder(prefix);
  if (!scopes.has_value()) {
    CKPT_ASSIGN_OR_RETURN(list, store->ListCheckpoints(prefix, start_after, limit + 1));
  } else {
    if (scopes->empty()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "token '", principal.name(), "' has no read right on any name under '", prefix, "'"));
    }
    // The readable names are those of each grant prefix: list each, keep
    // the first limit + 1 of their union in order.
    for (const std::string& scope : *scopes) {
      std::string after(start_after);
      size_t found = 0;
      while (found <= limit) {
        CKPT_ASSIGN_OR_RETURN(auto page, store->ListCheckpoints(scope, after, limit + 1));
        for (auto& c : page) {
          if (!PrefixCovers(scope, c.name)) continue;
          list.push_back(std::move(c));
          ++found;
        }
        if (page.size() < limit + 1) break;
        after = page.back().name;
      }
    }
    std::sort(list.begin(), list.end(),
              [](const auto& a, const auto& b) { return a.name < b.name; });
    list.erase(std::unique(list.begin(), list.end(),
                           [](const auto& a, const auto& b) { return a.name == b.name; }),
               list.end());
  }
  CheckpointPage out;
  if (list.size() > limit) {
    list.resize(limit);
    out.next_page_token = list.back().name;
  }
  out.checkpoints = std::move(list);
  return out;
}

grpc::ServerUnaryReactor* CheckpointService::ListCheckpoints(grpc::CallbackServerContext* context,
                                                             const grpc::ByteBuffer* raw_request,
                                                             grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::ListCheckpointsRequest, v1::ListCheckpointsResponse>(
      context, raw_request, raw_response, "ListCheckpoints",
      [this](const Principal& principal, CallRecord&, const v1::ListCheckpointsRequest& request,
             v1::ListCheckpointsResponse* response) -> absl::Status {
        const uint32_t limit =
            request.page_size() == 0 ? kMaxListPage : std::min(request.page_size(), kMaxListPage);
        CKPT_ASSIGN_OR_RETURN(CheckpointPage page,
                              ListReadableCheckpoints(store_, principal, request.prefix(),
                                                      request.page_token(), limit));
        for (const CheckpointSummary& c : page.checkpoints) {
          rpc::ToProto(c, response->add_checkpoints());
        }
        response->set_next_page_token(page.next_page_token);
        return absl::OkStatus();
      });
}

}  // namespace ckpt::server
