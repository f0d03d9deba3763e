#ifndef CKPT_COMMON_TENSOR_STATS_H_
#define CKPT_COMMON_TENSOR_STATS_H_

// Per-tensor statistics (TensorStats in common/types.h) computed in one pass
// over a tensor's bytes as they stream, in pieces of any size: what clients
// run next to hashing, and what the server checks what they send against.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/types.h"

namespace ckpt {

/// Whether tensors of `dtype` get statistics: every real number type and
/// bool (not complex, not unspecified).
bool HasStats(DType dtype);

/// float32, float64, float16 and bfloat16: the dtypes that may hold NaN or
/// infinities.
bool IsFloating(DType dtype);

/// The element at `p` of a real `dtype` (HasStats) as a double; bool is 0
/// or 1. Any alignment.
double ElementValue(DType dtype, const uint8_t* p);

/// Regroups equal-length pieces of `kStreams` byte streams of one element
/// size into runs of whole elements: an element split between pieces is
/// carried (a few bytes) to the next Feed. What StatsAccumulator (one
/// stream) and DiffAccumulator (two in lockstep) feed their bytes through.
template <size_t kStreams>
class ElementCarry {
 public:
  using Starts = std::array<const uint8_t*, kStreams>;
  /// `element_bytes` in [1, 8].
  explicit ElementCarry(size_t element_bytes) : element_bytes_(element_bytes) {}

  /// The next `len` bytes of every stream (starting at p[s]); calls
  /// fn(starts, n) for each run of n >= 1 whole elements.
  template <typename Fn>
  void Feed(Starts p, size_t len, const Fn& fn) {
    if (carry_bytes_ > 0) {
      const size_t take = std::min(len, element_bytes_ - carry_bytes_);
      for (size_t s = 0; s < kStreams; ++s) {
        std::memcpy(carry_[s] + carry_bytes_, p[s], take);
        p[s] += take;
      }
      carry_bytes_ += take;
      len -= take;
      if (carry_bytes_ < element_bytes_) return;
      Starts carried;
      for (size_t s = 0; s < kStreams; ++s) carried[s] = carry_[s];
      fn(carried, size_t{1});
      carry_bytes_ = 0;
    }
    const size_t whole = len / element_bytes_;
    if (whole > 0) fn(p, whole);
    carry_bytes_ = len - whole * element_bytes_;
    for (size_t s = 0; s < kStreams; ++s) {
      std::memcpy(carry_[s], p[s] + whole * element_bytes_, carry_bytes_);
    }
  }

 private:
  size_t element_bytes_;
  uint8_t carry_[kStreams][8] = {};
  size_t carry_bytes_ = 0;
};

/// Accumulates the statistics of one tensor from its bytes, given in order
/// in pieces of any size (an element may straddle two pieces). Numerically
/// stable: blocks of elements are summed relative to a shift and merged
/// with Chan et al.'s pairwise update. Not thread-safe; cheap to copy.
class StatsAccumulator {
 public:
  /// `dtype` must satisfy HasStats.
  explicit StatsAccumulator(DType dtype);

  /// The next bytes of the tensor.
  void Add(absl::string_view bytes);

  /// The statistics of everything added (a trailing partial element is
  /// ignored).
  TensorStats Finish() const;

 private:
  void AddElements(const uint8_t* data, size_t n);
  template <typename Acc, typename Load>
  void AddBlock(const Load& load, size_t n, const uint8_t* native = nullptr);
  void Merge(uint64_t n, double min, double max, double mean, double m2, double sumsq);

  DType dtype_;
  size_t element_bytes_;
  ElementCarry<1> carry_;
  uint64_t count_ = 0;
  uint64_t finite_ = 0;
  uint64_t nan_ = 0;
  uint64_t pos_inf_ = 0;
  uint64_t neg_inf_ = 0;
  double min_ = 0;
  double max_ = 0;
  double mean_ = 0;
  double m2_ = 0;  // sum of squared deviations from the mean
  double sumsq_ = 0;
};

/// Statistics of a whole tensor in memory (a StatsAccumulator fed once).
TensorStats ComputeStats(DType dtype, absl::string_view bytes);

/// Checks statistics a writer sent for a tensor of `meta` with `numel`
/// elements: a dtype that has statistics, count == numel, NaN and
/// infinities at most count (none for non-floating dtypes), a finite
/// min <= max, no NaN (mean, std and l2 may be infinite: the moments of
/// float64 values near DBL_MAX overflow), std and l2 not negative.
/// InvalidArgument saying what is wrong otherwise.
absl::Status ValidateStats(const TensorMeta& meta, uint64_t numel);

/// The NaN/Inf guard over a whole tree about to be committed as `name`:
/// FailedPrecondition when a tensor's statistics count NaN or infinities,
/// naming the first few (flattened keys) with their counts and how many
/// tensors in all, or when a float tensor has no statistics (the guard
/// cannot vouch for it). `why` says who asked ("the save asked for it",
/// "ckpt-server --reject-nonfinite team/"). OK otherwise.
absl::Status CheckFinite(const Tree& tree, absl::string_view name, absl::string_view why);

}  // namespace ckpt

#endif  // CKPT_COMMON_TENSOR_STATS_H_
