#ifndef CKPT_SERVER_SERVICE_INTERNAL_H_
#define CKPT_SERVER_SERVICE_INTERNAL_H_

// What the files of CheckpointService share (service.cc, save_reactor.cc,
// load_reactor.cc and the *_handlers.cc): the reactors' factories and
// reference counting, RunUnary and the request helpers of the unary handlers.
// Not for use outside server/.

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "rpc/grpc_status.h"
#include "rpc/wire.h"
#include "server/service.h"

namespace ckpt::server {

constexpr uint32_t kMaxManifestPage = 10000;
constexpr uint32_t kMaxListPage = 1000;

inline std::string Hex(const Digest& d) { return d.Hex(); }

// Reference counting shared by the streaming reactors: gRPC's OnDone drops
// one reference, every task posted to the executor holds one, so a reactor
// is deleted only once gRPC and our own work are both done with it.
class RefCounted {
 public:
  virtual ~RefCounted() = default;
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

 private:
  std::atomic<int> refs_{1};
};

// The reactors of the two streaming methods (save_reactor.cc,
// load_reactor.cc); each deletes itself when gRPC and its tasks are done.
grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewSaveReactor(
    CheckpointService* service, grpc::CallbackServerContext* context);
grpc::ServerWriteReactor<grpc::ByteBuffer>* NewLoadReactor(CheckpointService* service,
                                                           grpc::CallbackServerContext* context,
                                                           const grpc::ByteBuffer& raw_request);

// The checkpoint a request names, for its log line ("" if none).
template <typename Req>
auto NameOf(const Req& request, int) -> decltype(request.name(), std::string()) {
  return request.name();
}
template <typename Req>
std::string NameOf(const Req&, long) {
  return "";
}
template <typename Req>
std::string NameOf(const Req& request) {
  return NameOf(request, 0);
}

inline absl::StatusOr<uint64_t> ParsePageToken(const std::string& token) {
  uint64_t value = 0;
  if (token.empty()) return value;
  if (!absl::SimpleAtoi(token, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid page_token '", Excerpt(token), "'"));
  }
  return value;
}

// OK if `name` is valid and `principal` has `right` on it.
inline absl::Status CheckName(const Principal& principal, Right right, absl::string_view name) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  return principal.Check(right, name);
}

template <typename Req, typename Resp, typename Fn>
grpc::ServerUnaryReactor* CheckpointService::RunUnary(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* raw_request,
                                                      grpc::ByteBuffer* raw_response,
                                                      absl::string_view method, Fn fn) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto record = std::make_shared<CallRecord>(telemetry_.get(), method, context->peer());
  auto request = std::make_shared<Req>();
  absl::Status parsed = rpc::FromByteBuffer(*raw_request, request.get(), Req::descriptor()->name());
  if (parsed.ok()) record->set_checkpoint(NameOf(*request));
  if (!Enter()) {
    absl::Status status = absl::UnavailableError("server shutting down");
    record->End(status);
    reactor->Finish(ToClient(status));
    return reactor;
  }
  auto principal = Authenticate(*context);
  if (!principal.ok() || !parsed.ok()) {
    const absl::Status status = principal.ok() ? parsed : principal.status();
    record->End(status);
    reactor->Finish(ToClient(status));
    Leave();
    return reactor;
  }
  record->set_principal((*principal)->name());
  executor_->Post([this, reactor, record, request, raw_response, principal = *std::move(principal),
                   fn = std::move(fn)]() mutable {
    Resp response;
    absl::Status status = fn(*principal, *record, *request, &response);
    if (status.ok()) *raw_response = rpc::ToByteBuffer(response);
    record->End(status);
    reactor->Finish(ToClient(status));
    Leave();
  });
  return reactor;
}

}  // namespace ckpt::server

#endif  // CKPT_SERVER_SERVICE_INTERNAL_H_
