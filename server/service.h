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
#include "server/heap_trimmer.h"
#include "server/idle_watchdog.h"
#include "server/memory_budget.h"
#include "server/server.h"
#include "server/telemetry.h"
#include "storage/store.h"

namespace ckpt::server {

class PendingSaves;

/// Every method is registered raw (grpc::ByteBuffer in and out), with the
/// same wire format as the generated messages: requests are parsed here, so
/// that bytes that are no valid message get INVALID_ARGUMENT "malformed
/// <Request>" (gRPC's own parsing would answer UNIMPLEMENTED or end a Save
/// stream as if the client had gone), and Load's data messages reference
/// chunk bytes rather than copy them twice.
using RawCheckpointService = v1::CheckpointService::WithRawCallbackMethod_Save<
    v1::CheckpointService::WithRawCallbackMethod_Load<
        v1::CheckpointService::WithRawCallbackMethod_ListCheckpoints<
            v1::CheckpointService::WithRawCallbackMethod_ListVersions<
                v1::CheckpointService::WithRawCallbackMethod_GetManifest<
                    v1::CheckpointService::WithRawCallbackMethod_DeleteVersion<
                        v1::CheckpointService::WithRawCallbackMethod_SetTag<
                            v1::CheckpointService::WithRawCallbackMethod_DeleteTag<
                                v1::CheckpointService::WithRawCallbackMethod_GetServerInfo<
                                    v1::CheckpointService::WithRawCallbackMethod_GetUsage<
                                        v1::CheckpointService::WithRawCallbackMethod_GarbageCollect<
                                            v1::CheckpointService::WithRawCallbackMethod_SetRetention<
                                                v1::CheckpointService::WithRawCallbackMethod_GetRetention<
                                                    v1::CheckpointService::WithRawCallbackMethod_Prune<
                                                        v1::CheckpointService::
                                                            WithRawCallbackMethod_Backup<
                                                                v1::CheckpointService::
                                                                    WithRawCallbackMethod_Diff<
                                                                        v1::CheckpointService::
                                                                            Service>>>>>>>>>>>>>>>>;

class CheckpointService final : public RawCheckpointService {
 public:
  /// `store` must outlive the service. `auth` null: development mode (no
  /// token needed).
  CheckpointService(storage::Store* store, const ServerOptions& options,
                    std::unique_ptr<Authenticator> auth = nullptr);
  ~CheckpointService() override;

  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Save(
      grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Load(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* ListCheckpoints(grpc::CallbackServerContext* context,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListVersions(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetManifest(grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer* request,
                                        grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DeleteVersion(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SetTag(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* DeleteTag(grpc::CallbackServerContext* context,
                                      const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const grpc::ByteBuffer* request,
                                          grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetUsage(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GarbageCollect(grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* SetRetention(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetRetention(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Prune(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Backup(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Diff(grpc::CallbackServerContext* context,
                                 const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;

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

  /// `status` as the client sees it: the store's directory is not named
  /// (it stays in the server's log), the message is cut at
  /// rpc::kMaxStatusMessage bytes.
  grpc::Status ToClient(const absl::Status& status) const;

  /// The principal of the call's `authorization` metadata (Unauthenticated
  /// if missing or invalid; "anonymous" in development mode).
  absl::StatusOr<std::shared_ptr<const Principal>> Authenticate(
      const grpc::CallbackServerContext& context) const;

  storage::Store* store() const { return store_; }
  const ServerOptions& options() const { return options_; }
  Executor& executor() { return *executor_; }
  PendingSaves& pending() { return *pending_; }
  MemoryBudget& tree_memory() { return tree_memory_; }
  Telemetry& telemetry() { return *telemetry_; }
  Authenticator& auth() { return *auth_; }
  IdleWatchdog& watchdog() { return *watchdog_; }

 private:
  // Parses the request (INVALID_ARGUMENT if it is no valid Req), then runs
  // `fn(principal, record, request, &response)` on the executor once the
  // caller is authenticated, and finishes the call with its status (the
  // response serialized on success). `fn` checks the right it needs.
  template <typename Req, typename Resp, typename Fn>
  grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* raw_request,
                                     grpc::ByteBuffer* raw_response, absl::string_view method,
                                     Fn fn);

  storage::Store* store_;
  ServerOptions options_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<Telemetry> telemetry_;
  std::unique_ptr<IdleWatchdog> watchdog_;
  MemoryBudget tree_memory_;  // before pending_: parts hold reservations
  std::unique_ptr<PendingSaves> pending_;
  std::unique_ptr<Executor> executor_;
  std::atomic<int> streams_{0};
  // Gives what a burst of streams freed back to the system once none is open.
  HeapTrimmer heap_trimmer_{absl::Seconds(1)};

  std::mutex drain_mu_;
  std::condition_variable drain_cv_;
  bool draining_ = false;
  int in_flight_ = 0;
};

}  // namespace ckpt::server

#endif  // CKPT_SERVER_SERVICE_H_
