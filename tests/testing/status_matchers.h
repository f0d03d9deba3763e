#ifndef CKPT_TESTS_TESTING_STATUS_MATCHERS_H_
#define CKPT_TESTS_TESTING_STATUS_MATCHERS_H_

// GoogleTest assertions on absl::Status and absl::StatusOr<T>, printing the
// status when they fail. Header-only: include it from any test.
//
//   ASSERT_OK(store->SetTag("a/b", "best", 1));
//   EXPECT_OK(store->DeleteTag("a/b", "best"));
//   ASSERT_OK_AND_ASSIGN(VersionInfo info, store->GetVersion("a/b", {}));

#include <gtest/gtest.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ckpt::testing::internal {

// The status of a Status or a StatusOr, for the macros below.
inline const absl::Status& StatusOf(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

}  // namespace ckpt::testing::internal

/// Fails the test (fatally / not) unless `expr` (a Status or StatusOr) is OK.
#define ASSERT_OK(expr)                                                            \
  do {                                                                             \
    const auto& ckpt_assert_ok_ = (expr);                                          \
    const absl::Status& ckpt_assert_status_ =                                      \
        ::ckpt::testing::internal::StatusOf(ckpt_assert_ok_);                      \
    ASSERT_TRUE(ckpt_assert_status_.ok()) << #expr << ": " << ckpt_assert_status_; \
  } while (0)
#define EXPECT_OK(expr)                                                            \
  do {                                                                             \
    const auto& ckpt_expect_ok_ = (expr);                                          \
    const absl::Status& ckpt_expect_status_ =                                      \
        ::ckpt::testing::internal::StatusOf(ckpt_expect_ok_);                      \
    EXPECT_TRUE(ckpt_expect_status_.ok()) << #expr << ": " << ckpt_expect_status_; \
  } while (0)

/// Evaluates `expr` (a StatusOr), fails the test fatally unless it is OK,
/// and moves its value into `lhs` (a declaration or an lvalue).
#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  CKPT_ASSERT_OK_AND_ASSIGN_IMPL_(CKPT_STATUS_MATCHERS_CAT_(ckpt_statusor_, __LINE__), lhs, expr)

#define CKPT_ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, expr)        \
  auto statusor = (expr);                                           \
  ASSERT_TRUE(statusor.ok()) << #expr << ": " << statusor.status(); \
  lhs = std::move(statusor).value()
#define CKPT_STATUS_MATCHERS_CAT_(a, b) CKPT_STATUS_MATCHERS_CAT_INNER_(a, b)
#define CKPT_STATUS_MATCHERS_CAT_INNER_(a, b) a##b

#endif  // CKPT_TESTS_TESTING_STATUS_MATCHERS_H_
