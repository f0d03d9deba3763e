#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <netdb.h>
#include <prometheus/exposer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "grpc/health/v1/health.pb.h"
#include "rpc/pem.h"
#include "rpc/protocol.h"
#include "server/service.h"
#include "server/web_ui.h"

namespace ckpt::server {

struct Server::Impl {
  std::unique_ptr<storage::Store> store;
  std::unique_ptr<CheckpointService> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<prometheus::Exposer> exposer;
  int metrics_port = 0;
  std::unique_ptr<WebUi> web;
  std::mutex mu;
  bool shut_down = false;
};

namespace {

// Plaintext, TLS, or TLS that requires and verifies client certificates.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& options) {
  const bool cert = !options.tls_cert_file.empty(), key = !options.tls_key_file.empty();
  if (cert != key) {
    return absl::InvalidArgumentError(
        "TLS needs both a certificate and a key (--tls-cert, --tls-key)");
  }
  if (!cert) {
    if (!options.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "client certificate verification (--tls-client-ca) needs TLS (--tls-cert, --tls-key)");
    }
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  CKPT_ASSIGN_OR_RETURN(pair.cert_chain, rpc::ReadPem(options.tls_cert_file, "TLS certificate"));
  CKPT_ASSIGN_OR_RETURN(pair.private_key, rpc::ReadPem(options.tls_key_file, "TLS key"));
  ssl.pem_key_cert_pairs.push_back(std::move(pair));
  if (!options.tls_client_ca_file.empty()) {
    CKPT_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                          rpc::ReadPem(options.tls_client_ca_file, "client CA certificate"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

// Why `address` ("HOST:PORT", "[V6]:PORT") cannot be listened on, found by
// binding a socket to it the way a server would (no SO_REUSEPORT), e.g.
// "Address already in use". Empty when it can be bound now.
std::string BindError(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return "expected HOST:PORT";
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    return gai_strerror(rc);
  }
  std::string error;
  for (addrinfo* a = found; a != nullptr && error.empty(); a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 1) != 0) {
      error = std::strerror(errno);
    }
    close(fd);
  }
  freeaddrinfo(found);
  return error;
}

// "cannot listen on ADDRESS (WHAT): REASON" with a hint for the usual cause.
absl::Status ListenError(const std::string& what, const std::string& address,
                         const std::string& flag, absl::string_view detail) {
  std::string reason = BindError(address);
  if (reason.empty()) reason = std::string(detail);
  std::string hint;
  if (absl::StrContains(reason, "in use")) {
    hint = absl::StrCat(
        " (another ckpt-server or program listens there: stop it or choose "
        "another port with ",
        flag, ")");
  }
  return absl::UnavailableError(
      absl::StrCat("cannot listen on ", address, " (", what, "): ", reason, hint));
}

}  // namespace

Server::Server(std::unique_ptr<Impl> impl, int port) : impl_(std::move(impl)), port_(port) {}

Server::~Server() {
  // Scrapes and pages read the store: stop them first.
  impl_->exposer.reset();
  impl_->web.reset();
  Shutdown(absl::ZeroDuration());
  impl_->server->Wait();
  // Reactors finish their calls from queued storage work: let it run while
  // the gRPC server object still exists.
  impl_->service->Stop();
  impl_->server.reset();
  impl_->service.reset();
  impl_->store.reset();
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  if (options.chunk_size == 0 || options.chunk_size > options.store.max_chunk_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk size ", options.chunk_size, " not in [1, ", options.store.max_chunk_bytes, "]"));
  }
  if (options.max_message_bytes < rpc::kPieceBytes + rpc::kMessageHeadroom) {
    return absl::InvalidArgumentError("max message size must be at least 1 MiB + 64 KiB");
  }
  // Reference the health descriptor so the linker keeps health.pb.cc and
  // reflection can describe grpc.health.v1.Health.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();

  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials, Credentials(options));
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<Authenticator> auth,
                        Authenticator::FromFile(options.tokens_file));

  if (!options.backup_dir.empty()) {
    // Found wanting now rather than at the first backup.
    std::error_code ec;
    std::filesystem::create_directories(options.backup_dir, ec);
    if (ec || !std::filesystem::is_directory(options.backup_dir)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--backup-dir ", options.backup_dir,
          " is not a directory that can be created: ", ec ? ec.message() : "a file is in the way"));
    }
  }
  auto impl = std::make_unique<Impl>();
  CKPT_ASSIGN_OR_RETURN(impl->store, storage::Store::Open(options.store));
  impl->service = std::make_unique<CheckpointService>(impl->store.get(), options, std::move(auth));

  if (!options.metrics_listen.empty()) {
    try {
      impl->exposer = std::make_unique<prometheus::Exposer>(options.metrics_listen);
    } catch (const std::exception& e) {
      return ListenError("metrics", options.metrics_listen, "--metrics-listen", e.what());
    }
    for (const auto& c : impl->service->telemetry().collectables()) {
      impl->exposer->RegisterCollectable(c);
    }
    const std::vector<int> ports = impl->exposer->GetListeningPorts();
    impl->metrics_port = ports.empty() ? 0 : ports[0];
  }

  if (!options.http_listen.empty()) {
    absl::StatusOr<std::unique_ptr<WebUi>> web =
        WebUi::Start(options.http_listen, impl->service.get());
    if (!web.ok()) {
      return ListenError("web page", options.http_listen, "--http-listen", web.status().message());
    }
    impl->web = *std::move(web);
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, credentials, &port);
  // gRPC sets SO_REUSEPORT by default: a second server on a taken port would
  // start and take half of the connections. Refuse instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(impl->service.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  impl->server = builder.BuildAndStart();
  if (!impl->server || port == 0) {
    return ListenError("gRPC", options.listen, "--listen", "gRPC could not bind it");
  }
  impl->server->GetHealthCheckService()->SetServingStatus("ckpt.v1.CheckpointService", true);
  return std::unique_ptr<Server>(new Server(std::move(impl), port));
}

void Server::Shutdown(absl::Duration grace) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  // Drain ourselves: gRPC's Shutdown(deadline) also waits for idle client
  // connections to go away, which can take the whole deadline. New RPCs are
  // refused; those in flight get `grace` to finish, the rest are cancelled
  // (an uncommitted save then leaves nothing visible).
  impl_->server->GetHealthCheckService()->Shutdown();
  impl_->service->Drain(grace);
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
}

void Server::Wait() { impl_->server->Wait(); }

int Server::metrics_port() const { return impl_->metrics_port; }

int Server::http_port() const { return impl_->web ? impl_->web->port() : 0; }

bool Server::development_mode() const { return impl_->service->auth().development_mode(); }

absl::Status Server::ReloadTokens() { return impl_->service->auth().Reload(); }

std::string Server::ScrapeMetrics() const { return impl_->service->telemetry().Scrape(); }

}  // namespace ckpt::server
