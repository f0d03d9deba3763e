#ifndef CKPT_SERVER_SERVICE_H_
#define CKPT_SERVER_SERVICE_H_

// ckpt.v1.CheckpointService on the gRPC callback API. Reactors never block:
// storage work runs on an Executor and the next read or write starts when
// that work is done.

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "common/executor.h"
#include "server/auth.h"
#include "server/idle_watchdog.h"
#include "server/server.h"
#include "server/telemetry.h"
#include "storage/store.h"

namespace ckpt::server {

class PendingSaves;

/// Load is registered raw (grpc::ByteBuffer in and out) so that its data
/// messages reference chunk bytes rather than copy them twice; the wire
/// format is the same LoadRequest / LoadResponse.
class CheckpointService final : public v1::CheckpointService::WithRawCallbackMethod_Load<
                                    v1::CheckpointService::CallbackService> {
 public:
  /// `store` must outlive the service. `auth` null: development mode (no
  /// token needed).
  CheckpointService(storage::Store* store, const ServerOptions& options,
                    std::unique_ptr<Authenticator> auth = nullptr);
  ~CheckpointService() override;

  grpc::ServerBidiReactor<v1::SaveRequest, v1::SaveResponse>* Save(
      grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Load(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* ListCheckpoints(grpc::CallbackServerContext* context,
                                            const v1::ListCheckpointsRequest* request,
                                            v1::ListCheckpointsResponse* response) override;
  grpc::ServerUnaryReactor* ListVersions(grpc::CallbackServerContext* context,
                                         const v1::ListVersionsRequest* request,
                                         v1::ListVersionsResponse* response) override;
  grpc::ServerUnaryReactor* GetManifest(grpc::CallbackServerContext* context,
                                        const v1::GetManifestRequest* request,
                                        v1::GetManifestResponse* response) override;
  grpc::ServerUnaryReactor* DeleteVersion(grpc::CallbackServerContext* context,
                                          const v1::DeleteVersionRequest* request,
                                          v1::DeleteVersionResponse* response) override;
  grpc::ServerUnaryReactor* SetTag(grpc::CallbackServerContext* context,
                                   const v1::SetTagRequest* request,
                                   v1::SetTagResponse* response) override;
  grpc::ServerUnaryReactor* DeleteTag(grpc::CallbackServerContext* context,
                                      const v1::DeleteTagRequest* request,
                                      v1::DeleteTagResponse* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::GetServerInfoResponse* response) override;
  grpc::ServerUnaryReactor* SetRetention(grpc::CallbackServerContext* context,
                                         const v1::SetRetentionRequest* request,
                                         v1::SetRetentionResponse* response) override;
  grpc::ServerUnaryReactor* GetRetention(grpc::CallbackServerContext* context,
                                         const v1::GetRetentionRequest* request,
                                         v1::GetRetentionResponse* response) override;
  grpc::ServerUnaryReactor* Prune(grpc::CallbackServerContext* context,
                                  const v1::PruneRequest* request,
                                  v1::PruneResponse* response) override;
  grpc::ServerUnaryReactor* GarbageCollect(grpc::CallbackServerContext* context,
                                           const v1::GarbageCollectRequest* request,
                                           v1::GarbageCollectResponse* response) override;

  /// Refuses new RPCs with Unavailable from now on, then waits up to
  /// `grace` for the RPCs in flight to finish. Returns whether they did.
  bool Drain(absl::Duration grace);

  /// Fails multi-part saves still waiting and finishes the storage work
  /// already queued. Call after the gRPC server has shut down and before it
  /// is destroyed: reactors finish their calls here.
  void Stop();

  /// Counts an RPC in flight; false (count unchanged) once draining.
  bool Enter();
  /// Ends an RPC counted by Enter().
  void Leave();

  /// Counts a Save or Load stream; false (count unchanged) when
  /// options.max_streams are open already.
  bool EnterStream(absl::string_view method);
  /// Ends a stream counted by EnterStream().
  void LeaveStream(absl::string_view method);
  /// ResourceExhausted saying that --max-streams streams are open.
  absl::Status TooManyStreams() const;

  /// The principal of the call's `authorization` metadata (Unauthenticated
  /// if missing or invalid; "anonymous" in development mode).
  absl::StatusOr<std::shared_ptr<const Principal>> Authenticate(
      const grpc::CallbackServerContext& context) const;

  storage::Store* store() const { return store_; }
  const ServerOptions& options() const { return options_; }
  Executor& executor() { return *executor_; }
  PendingSaves& pending() { return *pending_; }
  Telemetry& telemetry() { return *telemetry_; }
  Authenticator& auth() { return *auth_; }
  IdleWatchdog& watchdog() { return *watchdog_; }

 private:
  // Runs `fn(principal, record)` on the executor once the caller is
  // authenticated, and finishes the call with its status. `fn` checks the
  // right it needs.
  template <typename Fn>
  grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context, absl::string_view method,
                                     absl::string_view checkpoint, Fn fn);

  storage::Store* store_;
  ServerOptions options_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<Telemetry> telemetry_;
  std::unique_ptr<IdleWatchdog> watchdog_;
  std::unique_ptr<PendingSaves> pending_;
  std::unique_ptr<Executor> executor_;
  std::atomic<int> streams_{0};

  std::mutex drain_mu_;
  std::condition_variable drain_cv_;
  bool draining_ = false;
  int in_flight_ = 0;
};

}  // namespace ckpt::server

#endif  // CKPT_SERVER_SERVICE_H_
