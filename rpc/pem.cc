#include "rpc/pem.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace ckpt::rpc {

absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " '", path, "'"));
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' is not PEM"));
  }
  return text.str();
}

}  // namespace ckpt::rpc
