// Tensor boxes (common/slice): validation, and the byte runs a box covers
// against a reference that visits every element.

#include "common/slice.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ckpt {
namespace {

using ::testing::HasSubstr;

TensorMeta Meta(DType dtype, std::vector<int64_t> shape) {
  TensorMeta meta;
  meta.dtype = dtype;
  meta.shape = std::move(shape);
  return meta;
}

// Every run of `slice`, merged where adjacent.
std::vector<std::pair<uint64_t, uint64_t>> Runs(const TensorMeta& meta, const TensorSlice& slice) {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  SliceRuns runs(meta, slice);
  uint64_t offset, length;
  while (runs.Next(&offset, &length)) {
    EXPECT_GT(length, 0u);
    if (!out.empty() && out.back().first + out.back().second == offset) {
      out.back().second += length;
    } else {
      out.emplace_back(offset, length);
    }
  }
  return out;
}

// The byte offsets of the box's elements in row-major order, one by one.
std::vector<uint64_t> ReferenceOffsets(const TensorMeta& meta, const TensorSlice& slice) {
  const size_t dims = meta.shape.size();
  const uint64_t elem = DTypeSize(meta.dtype);
  std::vector<uint64_t> out;
  for (size_t d = 0; d < dims; ++d) {
    if (slice.length[d] == 0) return out;
  }
  std::vector<uint64_t> index(dims, 0);
  for (;;) {
    uint64_t linear = 0;
    for (size_t d = 0; d < dims; ++d) {
      linear = linear * meta.shape[d] + slice.start[d] + index[d];
    }
    for (uint64_t b = 0; b < elem; ++b) out.push_back(linear * elem + b);
    size_t d = dims;
    while (d > 0) {
      --d;
      if (++index[d] < slice.length[d]) break;
      index[d] = 0;
      if (d == 0) return out;
    }
    if (dims == 0) return out;
  }
}

TEST(SliceTest, RunsMergeWholeTrailingDimensions) {
  const TensorMeta m = Meta(DType::kFloat32, {4, 5, 6});
  // Rows 1-2 whole: one run of 2 * 5 * 6 floats.
  EXPECT_THAT(Runs(m, {"t", {1, 0, 0}, {2, 5, 6}}),
              ::testing::ElementsAre(std::make_pair(uint64_t{1 * 30 * 4}, uint64_t{60 * 4})));
  // A column: 4 * 5 runs of one float, 24 bytes apart.
  SliceRuns column(m, {"t", {0, 0, 3}, {4, 5, 1}});
  EXPECT_EQ(column.total_bytes(), 4u * 5 * 4);
  uint64_t offset, length, count = 0;
  while (column.Next(&offset, &length)) {
    EXPECT_EQ(offset, (count * 6 + 3) * 4);
    EXPECT_EQ(length, 4u);
    ++count;
  }
  EXPECT_EQ(count, 20u);
  EXPECT_EQ(column.num_runs(), 20u);
  EXPECT_EQ(SliceRuns(m, {"t", {1, 0, 0}, {2, 5, 6}}).num_runs(), 1u);
  EXPECT_EQ(SliceRuns(m, {"t", {1, 1, 0}, {2, 3, 6}}).num_runs(), 2u);
  // 0-d tensor: its one element.
  EXPECT_THAT(Runs(Meta(DType::kFloat64, {}), {"s", {}, {}}),
              ::testing::ElementsAre(std::make_pair(uint64_t{0}, uint64_t{8})));
  // An empty box: nothing.
  EXPECT_TRUE(Runs(m, {"t", {2, 0, 0}, {0, 5, 6}}).empty());
  EXPECT_EQ(SliceRuns(m, {"t", {2, 0, 0}, {0, 5, 6}}).total_bytes(), 0u);
}

TEST(SliceTest, RunsAgreeWithAReferenceOnRandomBoxes) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    const size_t dims = rng() % 5;
    std::vector<int64_t> shape;
    for (size_t d = 0; d < dims; ++d) shape.push_back(static_cast<int64_t>(rng() % 6));
    const DType dtype = std::vector<DType>{DType::kBool, DType::kInt16, DType::kFloat32,
                                           DType::kComplex128}[rng() % 4];
    const TensorMeta meta = Meta(dtype, shape);
    TensorSlice slice{"k", {}, {}};
    for (size_t d = 0; d < dims; ++d) {
      const uint64_t a = rng() % (shape[d] + 1);
      slice.start.push_back(a);
      slice.length.push_back(rng() % (shape[d] - a + 1));
    }
    SCOPED_TRACE(absl::StrCat("shape [", absl::StrJoin(shape, ","), "] start [",
                              absl::StrJoin(slice.start, ","), "] length [",
                              absl::StrJoin(slice.length, ","), "]"));
    auto bytes = SliceBytes(meta, slice);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    std::vector<uint64_t> got;
    SliceRuns runs(meta, slice);
    uint64_t offset, length;
    while (runs.Next(&offset, &length)) {
      for (uint64_t b = 0; b < length; ++b) got.push_back(offset + b);
    }
    EXPECT_EQ(got, ReferenceOffsets(meta, slice));
    EXPECT_EQ(got.size(), *bytes);
    EXPECT_EQ(runs.total_bytes(), *bytes);
    EXPECT_EQ(Runs(meta, slice).size() <= SliceRuns(meta, slice).num_runs(), true);
  }
}

TEST(SliceTest, BoxesOutsideTheTensorAreRefused) {
  const TensorMeta m = Meta(DType::kFloat32, {4, 5});
  EXPECT_EQ(*SliceBytes(m, {"t", {1, 2}, {3, 3}}), 3u * 3 * 4);
  EXPECT_EQ(*SliceBytes(m, {"t", {4, 5}, {0, 0}}), 0u);
  auto rank = SliceBytes(m, {"t", {0}, {1}});
  EXPECT_EQ(rank.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(rank.status().message(),
              HasSubstr("slice of tensor 't': 1 starts and 1 lengths for a tensor of 2 "
                        "dimensions [4, 5]"));
  auto past = SliceBytes(m, {"t", {1, 2}, {4, 1}});
  EXPECT_EQ(past.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(past.status().message(),
              HasSubstr("box [1+4, 2+1] (start+length per dimension) is outside shape [4, 5] "
                        "in dimension 0"));
  auto start = SliceBytes(m, {"t", {0, 6}, {0, 0}});
  EXPECT_THAT(start.status().message(), HasSubstr("in dimension 1"));
  // start + length wraps around 2^64: still outside.
  auto wrap = SliceBytes(m, {"t", {1, 2}, {~uint64_t{0}, 1}});
  EXPECT_EQ(wrap.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wrap.status().message(), HasSubstr("in dimension 0"));
}

}  // namespace
}  // namespace ckpt
