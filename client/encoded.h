#ifndef CKPT_CLIENT_ENCODED_H_
#define CKPT_CLIENT_ENCODED_H_

// Value types in their ckpt.v1 protobuf encoding, as bytes: for bindings that
// read them in another language (the Python package's native load path
// hands a load's tree to Python this way, where the pure-Python client
// receives the same messages from the server).

#include <string>

#include "common/types.h"

namespace ckpt::client {

/// `tree` as one serialized ckpt.v1.NodeBatch (its nodes in order).
std::string EncodeNodeBatch(const Tree& tree);

/// `info` as a serialized ckpt.v1.VersionInfo.
std::string EncodeVersionInfo(const VersionInfo& info);

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_ENCODED_H_
