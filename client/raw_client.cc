#include "client/raw_client.h"

#include <grpcpp/grpcpp.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "client/grpc_raw_client.h"
#include "common/status_macros.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc/convert.h"
#include "rpc/grpc_status.h"
#include "rpc/pem.h"
#include "rpc/protocol.h"

namespace ckpt::client {

// The cancel hook runs under the lock: Attach(nullptr) at the end of a call
// waits for a Stop() in progress, so it never cancels a finished call's
// context.
void StopSource::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  if (cancel_) cancel_();
}

bool StopSource::stopped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopped_;
}

void StopSource::Attach(std::function<void()> cancel) {
  std::lock_guard<std::mutex> lock(mu_);
  cancel_ = std::move(cancel);
  if (stopped_ && cancel_) cancel_();
}

namespace {

using rpc::kMaxResponseBytes;

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  if (timeout > absl::ZeroDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const ClientOptions& options) {
  const bool files = !options.tls_ca_file.empty() || !options.tls_cert_file.empty() ||
                     !options.tls_key_file.empty() || !options.tls_server_name.empty();
  if (!options.tls) {
    if (files) {
      return absl::InvalidArgumentError(
          "TLS settings (CA, client certificate, server name) given without TLS enabled");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "a client certificate needs its key, and a key its certificate");
  }
  grpc::SslCredentialsOptions ssl;
  if (!options.tls_ca_file.empty()) {
    CKPT_ASSIGN_OR_RETURN(ssl.pem_root_certs, rpc::ReadPem(options.tls_ca_file, "CA certificate"));
  }
  if (!options.tls_cert_file.empty()) {
    CKPT_ASSIGN_OR_RETURN(ssl.pem_cert_chain,
                          rpc::ReadPem(options.tls_cert_file, "client certificate"));
    CKPT_ASSIGN_OR_RETURN(ssl.pem_private_key, rpc::ReadPem(options.tls_key_file, "client key"));
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

void GrpcRawClient::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  for (grpc::ClientContext* context : in_flight_) context->TryCancel();
}

absl::StatusOr<std::vector<CheckpointSummary>> GrpcRawClient::ListCheckpoints(
    const std::string& prefix, const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  std::vector<CheckpointSummary> out;
  v1::ListCheckpointsRequest request;
  request.set_prefix(prefix);
  for (;;) {
    v1::ListCheckpointsResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::ListCheckpoints, request, &response, call, deadline));
    for (const auto& c : response.checkpoints()) out.push_back(rpc::FromProto(c));
    if (response.next_page_token().empty()) return out;
    request.set_page_token(response.next_page_token());
  }
}

absl::StatusOr<std::vector<VersionInfo>> GrpcRawClient::ListVersions(const std::string& name,
                                                                     const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::ListVersionsRequest request;
  request.set_name(name);
  std::vector<VersionInfo> out;
  do {  // Page by page: a name's versions may not fit one message.
    v1::ListVersionsResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::ListVersions, request, &response, call, deadline));
    for (const auto& v : response.versions()) out.push_back(rpc::FromProto(v));
    request.set_page_token(response.next_page_token());
  } while (!request.page_token().empty());
  return out;
}

absl::StatusOr<LoadedValue> GrpcRawClient::GetManifest(const std::string& name, uint64_t version,
                                                       const std::string& tag,
                                                       const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  LoadedValue out;
  v1::GetManifestRequest request;
  request.set_name(name);
  request.set_version(version);
  request.set_tag(tag);
  for (;;) {
    v1::GetManifestResponse response;
    CKPT_RETURN_IF_ERROR(
        Unary(&v1::CheckpointService::Stub::GetManifest, request, &response, call, deadline));
    out.version = rpc::FromProto(response.version());
    // Later pages must come from the same version even if `latest` moves.
    request.set_version(out.version.version);
    request.clear_tag();
    for (const auto& n : response.nodes()) {
      CKPT_ASSIGN_OR_RETURN(Node node, rpc::FromProto(n));
      out.tree.push_back(std::move(node));
    }
    if (response.next_page_token().empty()) break;
    request.set_page_token(response.next_page_token());
  }
  out.data.resize(out.tree.size());
  return out;
}

absl::StatusOr<uint64_t> GrpcRawClient::DeleteVersion(const std::string& name, uint64_t version,
                                                      bool force, const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::DeleteVersionRequest request;
  request.set_name(name);
  request.set_version(version);
  request.set_force(force);
  v1::DeleteVersionResponse response;
  CKPT_RETURN_IF_ERROR(
      Unary(&v1::CheckpointService::Stub::DeleteVersion, request, &response, call, deadline));
  return response.released_chunks();
}

absl::Status GrpcRawClient::SetTag(const std::string& name, const std::string& tag,
                                   uint64_t version, const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::SetTagRequest request;
  request.set_name(name);
  request.set_tag(tag);
  request.set_version(version);
  v1::SetTagResponse response;
  return Unary(&v1::CheckpointService::Stub::SetTag, request, &response, call, deadline);
}

absl::Status GrpcRawClient::DeleteTag(const std::string& name, const std::string& tag,
                                      const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::DeleteTagRequest request;
  request.set_name(name);
  request.set_tag(tag);
  v1::DeleteTagResponse response;
  return Unary(&v1::CheckpointService::Stub::DeleteTag, request, &response, call, deadline);
}

absl::StatusOr<ServerInfo> GrpcRawClient::GetServerInfo(const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::GetServerInfoRequest request;
  v1::GetServerInfoResponse response;
  CKPT_RETURN_IF_ERROR(
      Unary(&v1::CheckpointService::Stub::GetServerInfo, request, &response, call, deadline));
  return rpc::FromProto(response);
}

absl::StatusOr<GcResult> GrpcRawClient::GarbageCollect(const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::GarbageCollectRequest request;
  v1::GarbageCollectResponse response;
  CKPT_RETURN_IF_ERROR(
      Unary(&v1::CheckpointService::Stub::GarbageCollect, request, &response, call, deadline));
  return rpc::FromProto(response);
}

absl::StatusOr<BackupInfo> GrpcRawClient::Backup(const std::string& name, const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::BackupRequest request;
  request.set_name(name);
  v1::BackupResponse response;
  CKPT_RETURN_IF_ERROR(
      Unary(&v1::CheckpointService::Stub::Backup, request, &response, call, deadline));
  return rpc::FromProto(response);
}

absl::StatusOr<VersionDiff> GrpcRawClient::Diff(const std::string& name, uint64_t version,
                                                const std::string& tag,
                                                const std::string& other_name,
                                                uint64_t other_version,
                                                const std::string& other_tag, uint32_t max_entries,
                                                const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::DiffRequest request;
  request.set_name(name);
  request.set_version(version);
  request.set_tag(tag);
  request.set_other_name(other_name);
  request.set_other_version(other_version);
  request.set_other_tag(other_tag);
  request.set_max_entries(max_entries);
  v1::DiffResponse response;
  CKPT_RETURN_IF_ERROR(
      Unary(&v1::CheckpointService::Stub::Diff, request, &response, call, deadline));
  return rpc::FromProto(response);
}

absl::StatusOr<NamespaceUsage> GrpcRawClient::GetUsage(const std::string& name_or_prefix,
                                                       const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::GetUsageRequest request;
  request.set_namespace_(name_or_prefix);
  v1::GetUsageResponse response;
  CKPT_RETURN_IF_ERROR(
      Unary(&v1::CheckpointService::Stub::GetUsage, request, &response, call, deadline));
  return rpc::FromProto(response);
}

absl::StatusOr<std::vector<uint64_t>> GrpcRawClient::SetRetention(const std::string& name,
                                                                  const RetentionPolicy& policy,
                                                                  const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::SetRetentionRequest request;
  request.set_name(name);
  rpc::ToProto(policy, request.mutable_policy());
  v1::SetRetentionResponse response;
  CKPT_RETURN_IF_ERROR(
      Unary(&v1::CheckpointService::Stub::SetRetention, request, &response, call, deadline));
  return std::vector<uint64_t>(response.would_delete().begin(), response.would_delete().end());
}

absl::StatusOr<RetentionPolicy> GrpcRawClient::GetRetention(const std::string& name,
                                                            const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::GetRetentionRequest request;
  request.set_name(name);
  v1::GetRetentionResponse response;
  CKPT_RETURN_IF_ERROR(
      Unary(&v1::CheckpointService::Stub::GetRetention, request, &response, call, deadline));
  return rpc::FromProto(response.policy());
}

absl::StatusOr<std::vector<uint64_t>> GrpcRawClient::Prune(const std::string& name, bool dry_run,
                                                           const CallOptions& call) {
  const absl::Time deadline = Deadline(call);
  v1::PruneRequest request;
  request.set_name(name);
  request.set_dry_run(dry_run);
  v1::PruneResponse response;
  CKPT_RETURN_IF_ERROR(
      Unary(&v1::CheckpointService::Stub::Prune, request, &response, call, deadline));
  return std::vector<uint64_t>(response.deleted().begin(), response.deleted().end());
}

absl::Status GrpcRawClient::Health(const CallOptions& call) {
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  CKPT_RETURN_IF_ERROR(Call(*health_, &grpc::health::v1::Health::Stub::Check, request, &response,
                            call, Deadline(call)));
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(absl::StrCat(
        "server is not serving (health status ",
        grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()), ")"));
  }
  return absl::OkStatus();
}

void GrpcRawClient::Prepare(grpc::ClientContext* context, absl::Duration timeout) const {
  SetDeadline(context, timeout);
  if (!options_.token.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
  }
}

absl::Time GrpcRawClient::Deadline(const CallOptions& call) const {
  const absl::Duration timeout =
      call.timeout > absl::ZeroDuration() ? call.timeout : options_.rpc_timeout;
  return timeout > absl::ZeroDuration() ? absl::Now() + timeout : absl::InfiniteFuture();
}

absl::StatusOr<std::unique_ptr<RawClient>> RawClient::Connect(const std::string& target,
                                                              const ClientOptions& options) {
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                        Credentials(options));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxResponseBytes);
  args.SetMaxSendMessageSize(static_cast<int>(rpc::kMaxRequestBytes));
  if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
  auto channel = grpc::CreateCustomChannel(target, credentials, args);
  if (options.connect_timeout > absl::ZeroDuration() &&
      !channel->WaitForConnected(absl::ToChronoTime(absl::Now() + options.connect_timeout))) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach ckpt server at ", target, " within ",
        absl::FormatDuration(options.connect_timeout),
        options.tls ? " (TLS: check the address, the CA, the server name and the client "
                      "certificate)"
                    : ""));
  }
  return std::unique_ptr<RawClient>(new GrpcRawClient(std::move(channel), options));
}

}  // namespace ckpt::client
