#include "client/requests.h"

#include "rpc/convert.h"

namespace ckpt::client {

void ToSaveBegin(const std::string& name, const SaveOptions& options, v1::SaveBegin* begin) {
  begin->set_name(name);
  begin->set_step(options.step);
  begin->set_epoch(options.epoch);
  begin->mutable_metadata()->insert(options.metadata.begin(), options.metadata.end());
  for (const std::string& tag : options.tags) begin->add_tags(tag);
  begin->set_reject_nonfinite(options.reject_nonfinite);
  begin->set_parent(options.parent);
  if (options.world_size > 1) {
    begin->mutable_part()->set_rank(options.rank);
    begin->mutable_part()->set_world_size(options.world_size);
    begin->mutable_part()->set_save_id(options.save_id);
  }
}

v1::LoadRequest ToLoadRequest(const std::string& name, const LoadOptions& options) {
  v1::LoadRequest request;
  request.set_name(name);
  request.set_version(options.version);
  request.set_tag(options.tag);
  for (const std::string& pattern : options.patterns) request.add_patterns(pattern);
  request.set_skip_data(options.skip_data);
  for (const TensorSlice& slice : options.slices) rpc::ToProto(slice, request.add_slices());
  return request;
}

}  // namespace ckpt::client
