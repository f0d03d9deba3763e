#ifndef CKPT_COMMON_STATUS_MACROS_H_
#define CKPT_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

/// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define CKPT_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status ckpt_status_ = (expr);        \
    if (!ckpt_status_.ok()) return ckpt_status_; \
  } while (0)

#define CKPT_CONCAT_INNER_(a, b) a##b
#define CKPT_CONCAT_(a, b) CKPT_CONCAT_INNER_(a, b)

/// `CKPT_ASSIGN_OR_RETURN(auto x, StatusOrExpr());` assigns the value or
/// returns the error from the enclosing function.
#define CKPT_ASSIGN_OR_RETURN(lhs, expr) \
  CKPT_ASSIGN_OR_RETURN_IMPL_(CKPT_CONCAT_(ckpt_statusor_, __LINE__), lhs, expr)
#define CKPT_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()

namespace ckpt {

/// Returns `status` with `context + ": "` prepended to its message (same
/// code). OK stays OK.
absl::Status Annotate(const absl::Status& status, absl::string_view context);

}  // namespace ckpt

#endif  // CKPT_COMMON_STATUS_MACROS_H_
