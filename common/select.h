#ifndef CKPT_COMMON_SELECT_H_
#define CKPT_COMMON_SELECT_H_

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

/// Selects the nodes of a valid `tree` whose flattened key, or the key of an
/// enclosing container, matches one of `patterns` (all of them when
/// `patterns` is empty). The root is always kept. NotFound listing the
/// patterns when they select no leaf and no container.
absl::StatusOr<Selection> SelectTree(const Tree& tree,
                                     const std::vector<KeyPattern>& patterns);

}  // namespace ckpt

#endif  // CKPT_COMMON_SELECT_H_
