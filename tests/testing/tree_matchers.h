#ifndef CKPT_TESTS_TESTING_TREE_MATCHERS_H_
#define CKPT_TESTS_TESTING_TREE_MATCHERS_H_

// The one field-by-field comparison of value trees for tests (gtest
// expectations; header-only so that any test target can use it).

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "common/types.h"

namespace ckpt::testing {

/// What ExpectSameTree compares beyond the values and tensor meta.
struct TreeComparison {
  /// Also chunk_size and the chunk digests (they depend on the chunk size a
  /// save used, so only codecs and stores compare them).
  bool chunks = false;
};

/// Every node of `got` equals `want`'s: kind, key, container size, scalar
/// values (doubles by bit pattern: -0.0 and NaN payloads too), strings, tensor
/// dtype/shape/device/requires_grad, `want`'s tensor statistics, data size.
inline void ExpectSameTree(const Tree& want, const Tree& got, TreeComparison compare = {}) {
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const Node& a = want[i];
    const Node& b = got[i];
    SCOPED_TRACE("node " + std::to_string(i));
    EXPECT_EQ(a.kind, b.kind);
    EXPECT_EQ(a.key, b.key);
    EXPECT_EQ(a.size, b.size);
    EXPECT_EQ(a.bool_value, b.bool_value);
    EXPECT_EQ(a.int_value, b.int_value);
    EXPECT_EQ(std::memcmp(&a.float_value, &b.float_value, sizeof(double)), 0)
        << a.float_value << " vs " << b.float_value;
    EXPECT_EQ(a.string_value, b.string_value);
    EXPECT_EQ(a.tensor.dtype, b.tensor.dtype);
    EXPECT_EQ(a.tensor.shape, b.tensor.shape);
    EXPECT_EQ(a.tensor.device, b.tensor.device);
    EXPECT_EQ(a.tensor.requires_grad, b.tensor.requires_grad);
    // Statistics the first tree has must be in the second; a saved tree
    // gains statistics its input did not carry (the client computes them).
    if (a.tensor.stats) {
      EXPECT_TRUE(b.tensor.stats.has_value() && *a.tensor.stats == *b.tensor.stats);
    }
    EXPECT_EQ(a.data.size, b.data.size);
    if (compare.chunks) {
      EXPECT_EQ(a.data.chunk_size, b.data.chunk_size);
      EXPECT_EQ(a.data.chunks, b.data.chunks);
    }
  }
}

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_TREE_MATCHERS_H_
