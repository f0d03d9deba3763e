// common/tensor_stats: the one-pass statistics against a plain two-pass
// reference, in pieces that split elements, for every dtype family; NaN and
// infinities counted apart; what the server refuses in sent statistics.

#include "common/tensor_stats.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace ckpt {
namespace {

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

// Two passes in long double over the finite values.
TensorStats Reference(const std::vector<double>& values) {
  TensorStats s;
  s.count = values.size();
  long double sum = 0, sumsq = 0;
  uint64_t finite = 0;
  for (double x : values) {
    if (std::isnan(x)) {
      ++s.nan;
    } else if (std::isinf(x)) {
      ++(x > 0 ? s.pos_inf : s.neg_inf);
    } else {
      s.min = finite == 0 ? x : std::min(s.min, x);
      s.max = finite == 0 ? x : std::max(s.max, x);
      sum += x;
      sumsq += static_cast<long double>(x) * x;
      ++finite;
    }
  }
  if (finite == 0) return s;
  const long double mean = sum / finite;
  long double dev = 0;
  for (double x : values) {
    if (std::isfinite(x)) dev += (x - mean) * (x - mean);
  }
  s.mean = static_cast<double>(mean);
  s.std = static_cast<double>(std::sqrt(dev / finite));
  s.l2 = static_cast<double>(std::sqrt(sumsq));
  return s;
}

// `rel`: float32 and narrower values are summed in float within blocks of
// 512 elements, so their statistics hold float's ~7 digits, not double's.
void ExpectNear(const TensorStats& got, const TensorStats& want, double rel = 1e-12) {
  EXPECT_EQ(got.count, want.count);
  EXPECT_EQ(got.nan, want.nan);
  EXPECT_EQ(got.pos_inf, want.pos_inf);
  EXPECT_EQ(got.neg_inf, want.neg_inf);
  EXPECT_EQ(got.min, want.min);
  EXPECT_EQ(got.max, want.max);
  EXPECT_NEAR(got.mean, want.mean, rel * (std::fabs(want.mean) + want.std) + 1e-300);
  EXPECT_NEAR(got.std, want.std, rel * want.std * 10 + 1e-300);
  EXPECT_NEAR(got.l2, want.l2, rel * want.l2 + 1e-300);
}

// Fed in pieces of 1, 3, 7, ... bytes: elements straddle pieces.
TensorStats InPieces(DType dtype, const std::string& bytes) {
  StatsAccumulator acc(dtype);
  size_t at = 0, piece = 1;
  while (at < bytes.size()) {
    const size_t n = std::min(piece, bytes.size() - at);
    acc.Add(absl::string_view(bytes).substr(at, n));
    at += n;
    piece = piece * 2 + 1;
  }
  return acc.Finish();
}

TEST(TensorStatsTest, Float32MatchesTheReferenceWholeAndInPieces) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(1000.0f, 0.5f);  // large mean, small spread
  std::vector<float> values(100003);
  for (float& v : values) v = normal(rng);
  const std::vector<double> wide(values.begin(), values.end());
  ExpectNear(ComputeStats(DType::kFloat32, Bytes(values)), Reference(wide), 1e-6);
  ExpectNear(InPieces(DType::kFloat32, Bytes(values)), Reference(wide), 1e-6);
  // float64 keeps double's precision.
  ExpectNear(ComputeStats(DType::kFloat64, Bytes(wide)), Reference(wide));
}

TEST(TensorStatsTest, NonFiniteValuesAreCountedApart) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> values(10000, 2.0f);
  values[0] = nan;  // the shift element is not finite
  values[17] = inf;
  values[5000] = -inf;
  values[9999] = nan;
  values[42] = -3.0f;
  const std::vector<double> wide(values.begin(), values.end());
  const TensorStats got = ComputeStats(DType::kFloat32, Bytes(values));
  EXPECT_EQ(got.nan, 2u);
  EXPECT_EQ(got.pos_inf, 1u);
  EXPECT_EQ(got.neg_inf, 1u);
  EXPECT_EQ(got.nonfinite(), 4u);
  EXPECT_EQ(got.min, -3.0);
  EXPECT_EQ(got.max, 2.0);
  ExpectNear(got, Reference(wide), 1e-6);

  const TensorStats all_nan = ComputeStats(DType::kFloat64, Bytes(std::vector<double>(9, nan)));
  EXPECT_EQ(all_nan.count, 9u);
  EXPECT_EQ(all_nan.nan, 9u);
  EXPECT_EQ(all_nan.min, 0.0);
  EXPECT_EQ(all_nan.l2, 0.0);
}

// Random bits as float32 hold values up to 3.4e38 whose squares overflow
// float; in double they do not. float64 near DBL_MAX overflows double:
// infinite moments, never NaN.
TEST(TensorStatsTest, HugeValuesDoNotOverflowIntoNaN) {
  std::vector<float> huge(3000, 3e38f);
  huge[7] = -3e38f;
  const std::vector<double> wide(huge.begin(), huge.end());
  const TensorStats f = ComputeStats(DType::kFloat32, Bytes(huge));
  ExpectNear(f, Reference(wide), 1e-6);
  EXPECT_TRUE(std::isfinite(f.l2));
  std::vector<double> top(100, std::numeric_limits<double>::max());
  const TensorStats d = ComputeStats(DType::kFloat64, Bytes(top));
  EXPECT_EQ(d.max, std::numeric_limits<double>::max());
  EXPECT_TRUE(std::isinf(d.l2));
  EXPECT_FALSE(std::isnan(d.mean) || std::isnan(d.std));
  TensorMeta meta;
  meta.dtype = DType::kFloat64;
  meta.stats = d;
  EXPECT_TRUE(ValidateStats(meta, 100).ok()) << ValidateStats(meta, 100);
}

TEST(TensorStatsTest, HalfPrecisionFormats) {
  // float16: 1.0, -2.0, 65504 (largest), a subnormal, +inf, NaN.
  const std::vector<uint16_t> half = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x7e00};
  const TensorStats h = InPieces(DType::kFloat16, Bytes(half));
  EXPECT_EQ(h.count, 6u);
  EXPECT_EQ(h.pos_inf, 1u);
  EXPECT_EQ(h.nan, 1u);
  EXPECT_EQ(h.min, -2.0);
  EXPECT_EQ(h.max, 65504.0);
  ExpectNear(
      h,
      Reference({1.0, -2.0, 65504.0, std::ldexp(1.0, -24), std::numeric_limits<double>::infinity(),
                 std::numeric_limits<double>::quiet_NaN()}),
      1e-6);
  // bfloat16: 1.0, -0.5, -inf.
  const std::vector<uint16_t> bf = {0x3f80, 0xbf00, 0xff80};
  const TensorStats b = ComputeStats(DType::kBFloat16, Bytes(bf));
  EXPECT_EQ(b.neg_inf, 1u);
  EXPECT_EQ(b.min, -0.5);
  EXPECT_EQ(b.max, 1.0);
  EXPECT_DOUBLE_EQ(b.mean, 0.25);
}

TEST(TensorStatsTest, IntegersAndBool) {
  const std::vector<int64_t> ints = {-5, 3, 1000000000000, 7};
  const TensorStats i = InPieces(DType::kInt64, Bytes(ints));
  EXPECT_EQ(i.min, -5.0);
  EXPECT_EQ(i.max, 1e12);
  EXPECT_EQ(i.nonfinite(), 0u);
  const std::vector<uint8_t> flags = {1, 0, 1, 1};
  const TensorStats b = ComputeStats(DType::kBool, Bytes(flags));
  EXPECT_EQ(b.count, 4u);
  EXPECT_DOUBLE_EQ(b.mean, 0.75);
  const TensorStats empty = ComputeStats(DType::kInt8, "");
  EXPECT_EQ(empty.count, 0u);
  EXPECT_FALSE(HasStats(DType::kComplex64));
  EXPECT_TRUE(HasStats(DType::kUInt16));
}

TEST(TensorStatsTest, ValidateRefusesImpossibleStatistics) {
  TensorMeta meta;
  meta.dtype = DType::kFloat32;
  meta.shape = {10};
  EXPECT_TRUE(ValidateStats(meta, 10).ok());  // none sent
  meta.stats = ComputeStats(DType::kFloat32, Bytes(std::vector<float>(10, 1.5f)));
  EXPECT_TRUE(ValidateStats(meta, 10).ok());
  EXPECT_EQ(ValidateStats(meta, 11).message(),
            "statistics count 10 but the tensor has 11 elements");
  TensorMeta bad = meta;
  bad.stats->nan = 11;
  EXPECT_EQ(ValidateStats(bad, 10).code(), absl::StatusCode::kInvalidArgument);
  bad = meta;
  bad.stats->min = 3;  // > max
  EXPECT_EQ(ValidateStats(bad, 10).code(), absl::StatusCode::kInvalidArgument);
  bad = meta;
  bad.stats->mean = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(ValidateStats(bad, 10).code(), absl::StatusCode::kInvalidArgument);
  bad = meta;
  bad.stats->max = std::numeric_limits<double>::infinity();
  EXPECT_EQ(ValidateStats(bad, 10).code(), absl::StatusCode::kInvalidArgument);
  bad = meta;
  bad.stats->l2 = std::numeric_limits<double>::infinity();  // an overflow is true
  EXPECT_TRUE(ValidateStats(bad, 10).ok());
  bad = meta;
  bad.dtype = DType::kInt32;
  bad.stats->pos_inf = 1;
  EXPECT_EQ(ValidateStats(bad, 10).code(), absl::StatusCode::kInvalidArgument);
  bad.dtype = DType::kComplex64;
  EXPECT_EQ(ValidateStats(bad, 10).code(), absl::StatusCode::kInvalidArgument);
}

// Not a timed assertion: prints how fast the pass is, beside a memcpy of
// the same bytes, for the note and the benchmark's cost estimate.
TEST(TensorStatsTest, PrintsThroughput) {
  std::vector<float> values(16 << 20, 0.25f);
  const std::string bytes = Bytes(values);
  std::string copy(bytes.size(), '\0');
  auto t0 = std::chrono::steady_clock::now();
  std::memcpy(copy.data(), bytes.data(), bytes.size());
  auto t1 = std::chrono::steady_clock::now();
  const TensorStats s = ComputeStats(DType::kFloat32, bytes);
  auto t2 = std::chrono::steady_clock::now();
  EXPECT_EQ(s.count, values.size());
  const double gb = bytes.size() / 1e9;
  std::printf("float32 statistics: %.2f GB/s (memcpy %.2f GB/s)\n",
              gb / std::chrono::duration<double>(t2 - t1).count(),
              gb / std::chrono::duration<double>(t1 - t0).count());
}

}  // namespace
}  // namespace ckpt
