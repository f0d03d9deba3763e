#ifndef CKPT_COMMON_TENSOR_DIFF_H_
#define CKPT_COMMON_TENSOR_DIFF_H_

// How two versions' tensors differ (the Diff RPC, `ckpt diff`): the value
// types, and the element-wise comparison the server runs over two tensors'
// bytes as it streams them chunk by chunk.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/tensor_stats.h"
#include "common/types.h"

namespace ckpt {

/// How one tensor key differs between version A and version B.
enum class TensorChange {
  kChanged = 1,      ///< Same dtype and shape, different bytes.
  kOnlyInA = 2,      ///< The key is a tensor in A only.
  kOnlyInB = 3,      ///< The key is a tensor in B only.
  kMetaChanged = 4,  ///< dtype or shape differ: not compared element-wise.
};

/// "changed", "only in a", "only in b", "dtype/shape".
const char* TensorChangeName(TensorChange change);

struct TensorDiff {
  std::string key;  ///< Flattened key.
  TensorChange change = TensorChange::kChanged;
  DType dtype_a = DType::kUnspecified;
  DType dtype_b = DType::kUnspecified;
  std::vector<int64_t> shape_a;
  std::vector<int64_t> shape_b;
  /// kChanged: ||b - a|| / ||a|| over the element pairs where both are
  /// finite (+inf when ||a|| is 0 and b differs; complex: per component).
  double rel_l2 = 0;
  /// kChanged: max |b - a| over those pairs.
  double max_abs_diff = 0;
  /// kChanged: element pairs where a or b is NaN or infinite.
  uint64_t nonfinite_pairs = 0;
};

/// The comparison of two versions.
struct VersionDiff {
  VersionInfo a;
  VersionInfo b;
  /// kChanged entries first, largest rel_l2 first (then by key); then
  /// kMetaChanged, kOnlyInA, kOnlyInB, each by key. Identical tensors are
  /// only counted.
  std::vector<TensorDiff> tensors;
  uint64_t identical = 0;
  uint64_t changed = 0;
  uint64_t meta_changed = 0;
  uint64_t only_in_a = 0;
  uint64_t only_in_b = 0;
  /// Entries left out of `tensors` (a limit on their number).
  uint64_t truncated = 0;
  /// Tensor bytes read to compare, both versions together.
  uint64_t bytes_compared = 0;
};

/// Compares two tensors of one dtype element by element from their bytes,
/// given in equal-length pieces in order (an element may straddle pieces).
/// Memory: a few bytes. Not thread-safe.
class DiffAccumulator {
 public:
  explicit DiffAccumulator(DType dtype);

  /// The next `a.size()` bytes of both tensors (b.size() must be equal).
  void Add(absl::string_view a, absl::string_view b);

  /// Whether every byte so far was equal.
  bool identical() const { return identical_; }
  /// Fills rel_l2, max_abs_diff and nonfinite_pairs of `out`.
  void Finish(TensorDiff* out) const;

 private:
  void AddElements(const uint8_t* a, const uint8_t* b, size_t n);

  DType dtype_;  // complex tensors compare as their real component type
  size_t element_bytes_;
  ElementCarry<2> carry_;
  bool identical_ = true;
  double sum_sq_a_ = 0;
  double sum_sq_diff_ = 0;
  double max_abs_ = 0;
  uint64_t nonfinite_ = 0;
};

/// Sorts `diff.tensors` as VersionDiff documents.
void SortTensorDiffs(std::vector<TensorDiff>* tensors);

}  // namespace ckpt

#endif  // CKPT_COMMON_TENSOR_DIFF_H_
