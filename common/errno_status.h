#ifndef CKPT_COMMON_ERRNO_STATUS_H_
#define CKPT_COMMON_ERRNO_STATUS_H_

// The one mapping from an errno value to an absl::Status, for every layer
// that touches files (the store, the CLI's import/export).

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace ckpt {

/// `context: strerror(errnum)` with the code a caller can act on:
/// ENOENT NotFound; ENOSPC and EDQUOT ResourceExhausted (disk full: free
/// space, then retry); EACCES, EPERM and EROFS PermissionDenied; EEXIST
/// AlreadyExists; ENOTDIR, EISDIR, ENAMETOOLONG and EINVAL InvalidArgument;
/// EINTR and EAGAIN Unavailable; anything else (EIO, ...) Internal: a
/// failing disk is not worth retrying blindly.
absl::Status ErrnoStatus(int errnum, absl::string_view context);

}  // namespace ckpt

#endif  // CKPT_COMMON_ERRNO_STATUS_H_
