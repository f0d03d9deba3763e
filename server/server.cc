#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "grpc/health/v1/health.pb.h"
#include "server/service.h"

namespace ckpt::server {

struct Server::Impl {
  std::unique_ptr<storage::Store> store;
  std::unique_ptr<CheckpointService> service;
  std::unique_ptr<grpc::Server> server;
  std::mutex mu;
  bool shut_down = false;
};

Server::Server(std::unique_ptr<Impl> impl, int port) : impl_(std::move(impl)), port_(port) {}

Server::~Server() {
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
    return absl::InvalidArgumentError(absl::StrCat("chunk size ", options.chunk_size,
                                                   " not in [1, ",
                                                   options.store.max_chunk_bytes, "]"));
  }
  if (options.max_message_bytes < (1u << 20) + (64u << 10)) {
    return absl::InvalidArgumentError("max message size must be at least 1 MiB + 64 KiB");
  }
  // Reference the health descriptor so the linker keeps health.pb.cc and
  // reflection can describe grpc.health.v1.Health.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();

  auto impl = std::make_unique<Impl>();
  CKPT_ASSIGN_OR_RETURN(impl->store, storage::Store::Open(options.store));
  impl->service = std::make_unique<CheckpointService>(impl->store.get(), options);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(impl->service.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  impl->server = builder.BuildAndStart();
  if (!impl->server || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
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
  impl_->server->Shutdown(std::chrono::system_clock::now() +
                          std::chrono::milliseconds(100));
}

void Server::Wait() { impl_->server->Wait(); }

}  // namespace ckpt::server
