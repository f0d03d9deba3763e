#include "client/encoded.h"

#include "ckpt/v1/checkpoint.pb.h"
#include "rpc/convert.h"

namespace ckpt::client {

std::string EncodeNodeBatch(const Tree& tree) {
  v1::NodeBatch batch;
  batch.mutable_nodes()->Reserve(static_cast<int>(tree.size()));
  for (const Node& node : tree) rpc::ToProto(node, batch.add_nodes());
  return batch.SerializeAsString();
}

std::string EncodeVersionInfo(const VersionInfo& info) {
  v1::VersionInfo proto;
  rpc::ToProto(info, &proto);
  return proto.SerializeAsString();
}

}  // namespace ckpt::client
