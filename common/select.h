#ifndef CKPT_COMMON_SELECT_H_
#define CKPT_COMMON_SELECT_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/names.h"
#include "common/types.h"

namespace ckpt {

/// A subtree chosen by key patterns.
struct Selection {
  /// The selected tree: containers keep only children that are selected or
  /// contain something selected, with sizes adjusted.
  Tree tree;
  /// For each node of `tree`, its index in the original tree.
  std::vector<size_t> source;
};

/// Most matching work one selection may take: key bytes times the
/// patterns' KeyPattern::cost_per_byte plus keys times their cost_per_key,
/// summed (~0.1 s of one core: a worker is never held long; 20,000 keys of
/// 100 bytes take 2M per plain pattern, a million 60-byte keys two patterns).
inline constexpr uint64_t kMaxSelectWork = uint64_t{1} << 27;

/// Selects the nodes of a valid `tree` whose flattened key, or the key of an
/// enclosing container, matches one of `patterns` (all of them when
/// `patterns` is empty). The root is always kept. NotFound listing the
/// patterns when they select no leaf and no container. ResourceExhausted,
/// before any matching, when the patterns would take more than
/// kMaxSelectWork over this tree's keys. Cancelled as soon as `*cancelled`
/// (if given) turns true: the caller's call was cancelled.
absl::StatusOr<Selection> SelectTree(const Tree& tree, const std::vector<KeyPattern>& patterns,
                                     const std::atomic<bool>* cancelled = nullptr);

/// SelectTree that also selects the nodes i with `also[i]` (e.g. the tensors
/// a load slices), with their enclosing containers. With empty `patterns`
/// and some `also[i]` set, only those nodes are selected.
absl::StatusOr<Selection> SelectTree(const Tree& tree, const std::vector<KeyPattern>& patterns,
                                     const std::vector<bool>& also,
                                     const std::atomic<bool>* cancelled = nullptr);

}  // namespace ckpt

#endif  // CKPT_COMMON_SELECT_H_
