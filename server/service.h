#ifndef CKPT_SERVER_SERVICE_H_
#define CKPT_SERVER_SERVICE_H_

// ckpt.v1.CheckpointService on the gRPC callback API. Reactors never block:
// storage work runs on an Executor and the next read or write starts when
// that work is done.

#include <memory>

#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "common/executor.h"
#include "server/server.h"
#include "storage/store.h"

namespace ckpt::server {

class PendingSaves;

class CheckpointService final : public v1::CheckpointService::CallbackService {
 public:
  /// `store` must outlive the service.
  CheckpointService(storage::Store* store, const ServerOptions& options);
  ~CheckpointService() override;

  grpc::ServerBidiReactor<v1::SaveRequest, v1::SaveResponse>* Save(
      grpc::CallbackServerContext* context) override;
  grpc::ServerWriteReactor<v1::LoadResponse>* Load(grpc::CallbackServerContext* context,
                                                   const v1::LoadRequest* request) override;
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
  grpc::ServerUnaryReactor* GarbageCollect(grpc::CallbackServerContext* context,
                                           const v1::GarbageCollectRequest* request,
                                           v1::GarbageCollectResponse* response) override;

  storage::Store* store() const { return store_; }
  const ServerOptions& options() const { return options_; }
  Executor& executor() { return *executor_; }
  PendingSaves& pending() { return *pending_; }

 private:
  template <typename Fn>
  grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context, Fn fn);

  storage::Store* store_;
  ServerOptions options_;
  std::unique_ptr<PendingSaves> pending_;
  std::unique_ptr<Executor> executor_;
};

}  // namespace ckpt::server

#endif  // CKPT_SERVER_SERVICE_H_
