#include "common/tensor_stats.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ckpt {
namespace {

// Elements summed per block before merging into the running moments (in
// double): small enough that a block's float sums (128 per SIMD lane) keep
// float32's precision, large enough that the merge costs nothing.
constexpr size_t kBlock = 512;

template <typename T>
T LoadAs(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

float BFloat16ToFloat(uint16_t bits) {
  const uint32_t wide = uint32_t{bits} << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  uint32_t exponent = (h >> 10) & 0x1f;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {  // infinity or NaN
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {  // normal
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // zero
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// float16 -> float for all 65536 values (256 KiB, built once).
const float* HalfTable() {
  static const float* table = [] {
    auto* t = new float[65536];
    for (uint32_t h = 0; h < 65536; ++h) t[h] = HalfToFloat(static_cast<uint16_t>(h));
    return t;
  }();
  return table;
}

}  // namespace

double ElementValue(DType dtype, const uint8_t* p) {
  switch (dtype) {
    case DType::kFloat32:
      return LoadAs<float>(p);
    case DType::kFloat64:
      return LoadAs<double>(p);
    case DType::kFloat16:
      return HalfTable()[LoadAs<uint16_t>(p)];
    case DType::kBFloat16:
      return BFloat16ToFloat(LoadAs<uint16_t>(p));
    case DType::kInt8:
      return LoadAs<int8_t>(p);
    case DType::kInt16:
      return LoadAs<int16_t>(p);
    case DType::kInt32:
      return LoadAs<int32_t>(p);
    case DType::kInt64:
      return static_cast<double>(LoadAs<int64_t>(p));
    case DType::kUInt8:
      return *p;
    case DType::kBool:
      return *p != 0 ? 1.0 : 0.0;
    case DType::kUInt16:
      return LoadAs<uint16_t>(p);
    case DType::kUInt32:
      return LoadAs<uint32_t>(p);
    case DType::kUInt64:
      return static_cast<double>(LoadAs<uint64_t>(p));
    default:
      return 0;
  }
}

bool HasStats(DType dtype) {
  switch (dtype) {
    case DType::kUnspecified:
    case DType::kComplex64:
    case DType::kComplex128:
      return false;
    default:
      return static_cast<int>(dtype) >= 1 && static_cast<int>(dtype) <= kMaxDType;
  }
}

bool IsFloating(DType dtype) {
  return dtype == DType::kFloat32 || dtype == DType::kFloat64 || dtype == DType::kFloat16 ||
         dtype == DType::kBFloat16;
}

StatsAccumulator::StatsAccumulator(DType dtype)
    : dtype_(dtype),
      element_bytes_(std::max<size_t>(1, DTypeSize(dtype))),
      carry_(element_bytes_) {}

void StatsAccumulator::Add(absl::string_view bytes) {
  carry_.Feed({reinterpret_cast<const uint8_t*>(bytes.data())}, bytes.size(),
              [this](const ElementCarry<1>::Starts& p, size_t n) { AddElements(p[0], n); });
}

// One block of at most kBlock elements; load(i) gives element i, `native`
// the elements themselves when they are stored as Acc (else null).
// The fast path sums in lanes relative to a shift; a block with a
// non-finite value goes through the careful path that counts and skips
// them.
template <typename Acc, typename Load>
void StatsAccumulator::AddBlock(const Load& load, size_t n, const uint8_t* native) {
  count_ += n;
  const Acc first = load(0);
  const Acc shift = std::isfinite(first) ? first : Acc{0};
  // 16-byte vectors (GCC/Clang vector extensions): one SSE2/NEON register
  // each, so that every operation below is one instruction.
  typedef Acc Vec __attribute__((vector_size(16)));
  constexpr size_t kLanes = 16 / sizeof(Acc);
  const Vec vzero = {};
  const Vec vone = vzero + Acc{1};
  const Vec vshift = vzero + shift;
  Vec lo = vshift, hi = vshift, sum = vzero, sq_dev = vzero, sq = vzero, bad = vzero;
  const size_t whole = n - n % kLanes;
  for (size_t i = 0; i < whole; i += kLanes) {
    Vec x;
    if (native != nullptr) {
      std::memcpy(&x, native + i * sizeof(Acc), sizeof x);
    } else {
      for (size_t l = 0; l < kLanes; ++l) x[l] = load(i + l);
    }
    const Vec d = x - vshift;
    lo = x < lo ? x : lo;
    hi = x > hi ? x : hi;
    sum += d;
    sq_dev += d * d;
    sq += x * x;
    bad += (x - x != vzero) ? vone : vzero;  // NaN and infinities: x - x is NaN
  }
  double block_lo = shift, block_hi = shift, block_sum = 0, block_sq_dev = 0, block_sq = 0;
  double block_bad = 0;
  for (size_t l = 0; l < kLanes; ++l) {
    block_lo = std::min<double>(block_lo, lo[l]);
    block_hi = std::max<double>(block_hi, hi[l]);
    block_sum += sum[l];
    block_sq_dev += sq_dev[l];
    block_sq += sq[l];
    block_bad += bad[l];
  }
  for (size_t i = whole; i < n; ++i) {
    const double x = load(i);
    const double d = x - shift;
    block_lo = std::min(block_lo, x);
    block_hi = std::max(block_hi, x);
    block_sum += d;
    block_sq_dev += d * d;
    block_sq += x * x;
    if (!(std::fabs(x) <= std::numeric_limits<double>::max())) block_bad += 1;
  }
  // Huge float values (random bits, |x| > 1.8e19) overflow the float
  // squares: such a block is summed again in double below.
  if (block_bad == 0 && std::isfinite(block_sum) && std::isfinite(block_sq_dev) &&
      std::isfinite(block_sq)) {
    const double mean = shift + block_sum / n;
    const double m2 = std::max(0.0, block_sq_dev - block_sum * block_sum / n);
    Merge(n, block_lo, block_hi, mean, m2, block_sq);
    return;
  }
  // Careful path: count NaN and infinities, moments over the finite ones.
  uint64_t finite = 0;
  double f_lo = 0, f_hi = 0, f_sum = 0, f_sq_dev = 0, f_sq = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = load(i);
    if (std::isnan(x)) {
      ++nan_;
    } else if (std::isinf(x)) {
      ++(x > 0 ? pos_inf_ : neg_inf_);
    } else {
      f_lo = finite == 0 ? x : std::min(f_lo, x);
      f_hi = finite == 0 ? x : std::max(f_hi, x);
      const double d = x - shift;
      f_sum += d;
      f_sq_dev += d * d;
      f_sq += x * x;
      ++finite;
    }
  }
  if (finite == 0) return;
  const double mean = shift + f_sum / finite;
  const double m2 = std::max(0.0, f_sq_dev - f_sum * f_sum / finite);
  Merge(finite, f_lo, f_hi, mean, m2, f_sq);
}

void StatsAccumulator::Merge(uint64_t n, double min, double max, double mean, double m2,
                             double sumsq) {
  if (finite_ == 0) {
    min_ = min;
    max_ = max;
    mean_ = mean;
    m2_ = m2;
  } else {
    min_ = std::min(min_, min);
    max_ = std::max(max_, max);
    const double total = static_cast<double>(finite_ + n);
    const double delta = mean - mean_;
    mean_ += delta * static_cast<double>(n) / total;
    m2_ += m2 + delta * delta * static_cast<double>(finite_) * static_cast<double>(n) / total;
  }
  finite_ += n;
  sumsq_ += sumsq;
}

void StatsAccumulator::AddElements(const uint8_t* data, size_t n) {
  for (size_t start = 0; start < n; start += kBlock) {
    const size_t m = std::min(kBlock, n - start);
    const uint8_t* p = data + start * element_bytes_;
    switch (dtype_) {
      case DType::kFloat32:
        AddBlock<float>([p](size_t i) { return LoadAs<float>(p + 4 * i); }, m, p);
        break;
      case DType::kFloat64:
        AddBlock<double>([p](size_t i) { return LoadAs<double>(p + 8 * i); }, m, p);
        break;
      case DType::kFloat16: {
        const float* table = HalfTable();
        AddBlock<float>([p, table](size_t i) { return table[LoadAs<uint16_t>(p + 2 * i)]; }, m);
        break;
      }
      case DType::kBFloat16:
        AddBlock<float>([p](size_t i) { return BFloat16ToFloat(LoadAs<uint16_t>(p + 2 * i)); }, m);
        break;
      case DType::kInt8:
        AddBlock<double>([p](size_t i) { return static_cast<double>(LoadAs<int8_t>(p + i)); }, m);
        break;
      case DType::kInt16:
        AddBlock<double>([p](size_t i) { return static_cast<double>(LoadAs<int16_t>(p + 2 * i)); },
                         m);
        break;
      case DType::kInt32:
        AddBlock<double>([p](size_t i) { return static_cast<double>(LoadAs<int32_t>(p + 4 * i)); },
                         m);
        break;
      case DType::kInt64:
        AddBlock<double>([p](size_t i) { return static_cast<double>(LoadAs<int64_t>(p + 8 * i)); },
                         m);
        break;
      case DType::kUInt8:
        AddBlock<double>([p](size_t i) { return static_cast<double>(p[i]); }, m);
        break;
      case DType::kBool:
        AddBlock<double>([p](size_t i) { return p[i] != 0 ? 1.0 : 0.0; }, m);
        break;
      case DType::kUInt16:
        AddBlock<double>([p](size_t i) { return static_cast<double>(LoadAs<uint16_t>(p + 2 * i)); },
                         m);
        break;
      case DType::kUInt32:
        AddBlock<double>([p](size_t i) { return static_cast<double>(LoadAs<uint32_t>(p + 4 * i)); },
                         m);
        break;
      case DType::kUInt64:
        AddBlock<double>([p](size_t i) { return static_cast<double>(LoadAs<uint64_t>(p + 8 * i)); },
                         m);
        break;
      default:
        count_ += m;  // no statistics for this dtype: only counted
        break;
    }
  }
}

TensorStats StatsAccumulator::Finish() const {
  TensorStats stats;
  stats.count = count_;
  stats.nan = nan_;
  stats.pos_inf = pos_inf_;
  stats.neg_inf = neg_inf_;
  if (finite_ > 0) {
    stats.min = min_;
    stats.max = max_;
    stats.mean = mean_;
    stats.std = std::sqrt(m2_ / static_cast<double>(finite_));
    stats.l2 = std::sqrt(sumsq_);
    // float64 values near DBL_MAX overflow the moments: say +-inf, never NaN.
    if (std::isnan(stats.mean)) stats.mean = std::numeric_limits<double>::infinity();
    if (std::isnan(stats.std)) stats.std = std::numeric_limits<double>::infinity();
  }
  return stats;
}

TensorStats ComputeStats(DType dtype, absl::string_view bytes) {
  StatsAccumulator acc(dtype);
  acc.Add(bytes);
  return acc.Finish();
}

absl::Status ValidateStats(const TensorMeta& meta, uint64_t numel) {
  if (!meta.stats) return absl::OkStatus();
  const TensorStats& s = *meta.stats;
  if (!HasStats(meta.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("statistics given for a tensor of a dtype without them (",
                     static_cast<int>(meta.dtype), ")"));
  }
  if (s.count != numel) {
    return absl::InvalidArgumentError(
        absl::StrCat("statistics count ", s.count, " but the tensor has ", numel, " elements"));
  }
  if (s.nan > s.count || s.pos_inf > s.count - s.nan || s.neg_inf > s.count - s.nan - s.pos_inf) {
    return absl::InvalidArgumentError("statistics count more NaN and infinities than elements");
  }
  if (!IsFloating(meta.dtype) && s.nonfinite() > 0) {
    return absl::InvalidArgumentError("statistics count NaN or infinities in a non-float tensor");
  }
  if (!std::isfinite(s.min) || !std::isfinite(s.max)) {
    return absl::InvalidArgumentError("statistics need a finite min and max");
  }
  // mean, std and l2 may overflow double (+-inf), never be NaN.
  if (std::isnan(s.mean) || std::isnan(s.std) || std::isnan(s.l2)) {
    return absl::InvalidArgumentError("statistics must not be NaN");
  }
  if (s.min > s.max || s.std < 0 || s.l2 < 0) {
    return absl::InvalidArgumentError("statistics need min <= max and std, l2 >= 0");
  }
  return absl::OkStatus();
}

absl::Status CheckFinite(const Tree& tree, absl::string_view name, absl::string_view why) {
  constexpr size_t kNamed = 5;
  std::vector<std::string> keys;  // made only when something is refused
  std::vector<std::string> named;
  size_t bad = 0, unchecked = 0;
  std::string first_unchecked;
  for (size_t i = 0; i < tree.size(); ++i) {
    const Node& node = tree[i];
    if (node.kind != NodeKind::kTensor || !IsFloating(node.tensor.dtype)) continue;
    const std::optional<TensorStats>& stats = node.tensor.stats;
    if (stats && stats->nonfinite() == 0) continue;
    if (keys.empty()) keys = FlattenedKeys(tree);
    if (!stats) {
      if (unchecked++ == 0) first_unchecked = keys[i];
      continue;
    }
    if (bad++ < kNamed) {
      std::vector<std::string> counts;
      if (stats->nan) counts.push_back(absl::StrCat(stats->nan, " NaN"));
      if (stats->pos_inf) counts.push_back(absl::StrCat(stats->pos_inf, " +Inf"));
      if (stats->neg_inf) counts.push_back(absl::StrCat(stats->neg_inf, " -Inf"));
      named.push_back(absl::StrCat("'", keys[i], "' (", absl::StrJoin(counts, ", "), " of ",
                                   stats->count, ")"));
    }
  }
  if (bad > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("refusing '", name, "': ", bad, bad == 1 ? " tensor holds" : " tensors hold",
                     " NaN or infinite values: ", absl::StrJoin(named, ", "),
                     bad > kNamed ? ", ..." : "", " (", why, "); nothing was saved"));
  }
  if (unchecked > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("refusing '", name, "': ", unchecked, " float tensor",
                     unchecked == 1 ? "" : "s", " without statistics (e.g. '", first_unchecked,
                     "'), so NaN and infinities cannot be ruled out (", why,
                     "); save with a client that computes them; nothing was saved"));
  }
  return absl::OkStatus();
}

}  // namespace ckpt
