#include "server/service.h"

#include <filesystem>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "rpc/grpc_status.h"
#include "server/pending_saves.h"
#include "server/service_internal.h"

namespace ckpt::server {

CheckpointService::CheckpointService(storage::Store* store, const ServerOptions& options,
                                     std::unique_ptr<Authenticator> auth)
    : store_(store),
      options_(options),
      auth_(auth ? std::move(auth) : std::make_unique<Authenticator>()),
      telemetry_(std::make_unique<Telemetry>(store, options.log_level)),
      watchdog_(std::make_unique<IdleWatchdog>(options.idle_timeout)),
      tree_memory_(options.max_tree_memory),
      pending_(std::make_unique<PendingSaves>(store, options.store.max_chunk_bytes,
                                              options.part_timeout)),
      executor_(std::make_unique<Executor>(options.worker_threads)) {}

CheckpointService::~CheckpointService() { Stop(); }

void CheckpointService::Stop() {
  pending_->Shutdown();   // fails waiting parts
  executor_->Shutdown();  // runs what is queued, then joins
}

grpc::Status CheckpointService::ToClient(const absl::Status& status) const {
  if (status.ok() || options_.store.path.empty()) return rpc::ToGrpcStatus(status);
  // Paths of the store's files say where the server keeps its data: not a
  // client's business.
  std::string message(status.message());
  std::string dir = options_.store.path;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::error_code ec;
  const std::string absolute = std::filesystem::absolute(dir, ec).lexically_normal().string();
  for (const std::string& path : {absolute, dir}) {
    if (path.size() > 1) message = absl::StrReplaceAll(message, {{path, "<data-dir>"}});
  }
  return rpc::ToGrpcStatus(absl::Status(status.code(), message));
}

absl::StatusOr<std::shared_ptr<const Principal>> CheckpointService::Authenticate(
    const grpc::CallbackServerContext& context) const {
  std::vector<absl::string_view> values;
  auto range = context.client_metadata().equal_range("authorization");
  for (auto it = range.first; it != range.second; ++it) {
    values.emplace_back(it->second.data(), it->second.size());
  }
  return auth_->Authenticate(values);
}

bool CheckpointService::EnterStream(absl::string_view method) {
  const int before = streams_.fetch_add(1);
  if (options_.max_streams > 0 && before >= options_.max_streams) {
    streams_.fetch_sub(1);
    return false;
  }
  telemetry_->StreamOpened(method);
  heap_trimmer_.StreamOpened();
  return true;
}

void CheckpointService::LeaveStream(absl::string_view method) {
  telemetry_->StreamClosed(method);
  streams_.fetch_sub(1);
  heap_trimmer_.StreamClosed();
}

absl::Status CheckpointService::TooManyStreams() const {
  return absl::ResourceExhaustedError(
      absl::StrCat("too many streams: ", options_.max_streams,
                   " Save and Load streams are open (--max-streams); retry later"));
}

bool CheckpointService::Enter() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  if (draining_) return false;
  ++in_flight_;
  return true;
}

void CheckpointService::Leave() {
  std::lock_guard<std::mutex> lock(drain_mu_);
  if (--in_flight_ == 0) drain_cv_.notify_all();
}

bool CheckpointService::Drain(absl::Duration grace) {
  std::unique_lock<std::mutex> lock(drain_mu_);
  draining_ = true;
  return drain_cv_.wait_for(lock, absl::ToChronoMilliseconds(grace),
                            [this] { return in_flight_ == 0; });
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* CheckpointService::Save(
    grpc::CallbackServerContext* context) {
  return NewSaveReactor(this, context);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* CheckpointService::Load(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return NewLoadReactor(this, context, *request);
}

}  // namespace ckpt::server
