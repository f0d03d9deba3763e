#ifndef CKPT_COMMON_SLICE_H_
#define CKPT_COMMON_SLICE_H_

// Boxes of tensors (TensorSlice): what a load asks for when it needs only
// part of a stored tensor (a torch.distributed.checkpoint rank's share of a
// shard), and the byte runs of the tensor's row-major data a box covers.
// Pure functions, no I/O.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/types.h"

namespace ckpt {

/// A box of a tensor leaf: along each dimension d, indices [start[d],
/// start[d] + length[d]). A 0-d tensor's box has no dimensions.
struct TensorSlice {
  /// Flattened key of the tensor ("model/fc.weight", as FlattenedKeys).
  std::string key;
  std::vector<uint64_t> start;
  std::vector<uint64_t> length;
};

/// Most slices one load may ask for.
inline constexpr size_t kMaxSlices = 100000;
/// Most contiguous runs the slices of one load may cover together: a box
/// that takes one element of each row of a huge tensor costs a step per
/// element (~16M steps are a few seconds of one core).
inline constexpr uint64_t kMaxSliceRuns = uint64_t{1} << 24;

/// Bytes of `slice`'s box of a valid tensor `meta`. InvalidArgument naming
/// the key when the box has another number of dimensions than the tensor or
/// does not lie inside it.
absl::StatusOr<uint64_t> SliceBytes(const TensorMeta& meta, const TensorSlice& slice);

/// For each of `slices`, the index of the tensor node of a valid `tree` its
/// key names, each box checked with SliceBytes. InvalidArgument, naming the
/// key, for: more than kMaxSlices slices, a key that names no node, a node
/// that is not a tensor, a key that names several nodes (dict keys holding
/// "/"), a key given twice, a box that does not fit. Time is linear in the
/// tree's keys plus the slices.
absl::StatusOr<std::vector<size_t>> FindSlices(const Tree& tree,
                                               absl::Span<const TensorSlice> slices);

/// The contiguous runs of a tensor's row-major data that a box covers, in
/// increasing offset order: concatenated, they are the box's elements in
/// row-major order. Runs are as long as the box allows (trailing dimensions
/// the box covers whole merge into one run). Not thread-safe.
class SliceRuns {
 public:
  /// `slice` must have passed SliceBytes for `meta`.
  SliceRuns(const TensorMeta& meta, const TensorSlice& slice);

  /// The next run: byte offset in the tensor's data and length (> 0).
  /// False when every run was returned.
  bool Next(uint64_t* offset, uint64_t* length);

  /// Bytes of all runs together.
  uint64_t total_bytes() const { return total_; }
  /// Number of runs (what sending the box costs beyond its bytes).
  uint64_t num_runs() const { return runs_; }

 private:
  std::vector<uint64_t> length_;  // outer dimensions' lengths
  std::vector<uint64_t> stride_;  // outer dimensions' byte strides
  std::vector<uint64_t> index_;   // current outer index
  uint64_t offset_ = 0;           // offset of the current run
  uint64_t run_ = 0;              // bytes per run
  uint64_t total_ = 0;
  uint64_t runs_ = 0;
  bool done_ = false;
};

}  // namespace ckpt

#endif  // CKPT_COMMON_SLICE_H_
