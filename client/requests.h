#ifndef CKPT_CLIENT_REQUESTS_H_
#define CKPT_CLIENT_REQUESTS_H_

// The client core's options -> the ckpt.v1 requests that carry them. Internal
// to client/ (the one place that knows which option is which field).

#include <string>

#include "ckpt/v1/checkpoint.pb.h"
#include "client/raw_client.h"

namespace ckpt::client {

/// The first message of a Save stream of `name`: step, epoch, metadata, tags
/// and, for world_size > 1, the part (rank, world size, save id).
void ToSaveBegin(const std::string& name, const SaveOptions& options, v1::SaveBegin* begin);

/// The request of a Load of `name`: version or tag, patterns, skip_data and
/// slices.
v1::LoadRequest ToLoadRequest(const std::string& name, const LoadOptions& options);

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_REQUESTS_H_
