#ifndef CKPT_RPC_PEM_H_
#define CKPT_RPC_PEM_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckpt::rpc {

/// The contents of a PEM file (certificate, key, CA bundle) for TLS
/// credentials. NotFound if it cannot be read, InvalidArgument if it holds no
/// PEM block; `what` names it in the message ("CA certificates").
absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what);

}  // namespace ckpt::rpc

#endif  // CKPT_RPC_PEM_H_
