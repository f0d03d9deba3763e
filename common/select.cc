#include "common/select.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ckpt {
namespace {

class Selector {
 public:
  Selector(const Tree& tree, const std::vector<KeyPattern>& patterns, std::vector<std::string> keys,
           const std::vector<bool>& also, const std::atomic<bool>* cancelled)
      : tree_(tree),
        patterns_(patterns),
        keys_(std::move(keys)),
        also_(also),
        cancelled_(cancelled) {}

  // Appends the selected part of the subtree at `i` to out_; returns the
  // index after the subtree. `forced`: an ancestor matched. Sets *kept when
  // anything of the subtree was kept. Recursion depth is bounded by
  // kMaxDepth (trees are validated before they are stored).
  size_t Visit(size_t i, bool forced, bool* kept) {
    const Node& node = tree_[i];
    if (cancelled_ != nullptr && (i & 255) == 0 && cancelled_->load(std::memory_order_relaxed)) {
      stopped_ = true;
    }
    const bool matched =
        !stopped_ && (forced || (i > 0 && ((i < also_.size() && also_[i]) ||
                                           (!patterns_.empty() && Matches(keys_[i])))));
    if (!node.is_container()) {
      if (matched) {
        Emit(i);
        *kept = true;
      }
      return i + 1;
    }
    const size_t at = out_.tree.size();
    Emit(i);
    uint32_t kept_children = 0;
    size_t next = i + 1;
    for (uint32_t c = 0; c < node.size; ++c) {
      bool child_kept = false;
      next = Visit(next, matched, &child_kept);
      kept_children += child_kept;
    }
    if (kept_children > 0 || matched) {
      out_.tree[at].size = kept_children;
      *kept = true;
    } else if (i > 0) {
      out_.tree.resize(at);
      out_.source.resize(at);
    } else {
      out_.tree[at].size = 0;
    }
    return next;
  }

  Selection Take() { return std::move(out_); }
  bool stopped() const { return stopped_; }

 private:
  bool Matches(const std::string& key) const {
    for (const auto& p : patterns_) {
      if (p.Matches(key)) return true;
    }
    return false;
  }
  void Emit(size_t i) {
    out_.tree.push_back(tree_[i]);
    out_.source.push_back(i);
  }

  const Tree& tree_;
  const std::vector<KeyPattern>& patterns_;
  std::vector<std::string> keys_;
  const std::vector<bool>& also_;
  const std::atomic<bool>* cancelled_;
  bool stopped_ = false;  // cancelled: the rest is skipped
  Selection out_;
};

}  // namespace

absl::StatusOr<Selection> SelectTree(const Tree& tree, const std::vector<KeyPattern>& patterns,
                                     const std::atomic<bool>* cancelled) {
  return SelectTree(tree, patterns, {}, cancelled);
}

absl::StatusOr<Selection> SelectTree(const Tree& tree, const std::vector<KeyPattern>& patterns,
                                     const std::vector<bool>& also,
                                     const std::atomic<bool>* cancelled) {
  const bool any_also = std::find(also.begin(), also.end(), true) != also.end();
  Selection all;
  if (patterns.empty() && !any_also) {
    all.tree = tree;
    all.source.resize(tree.size());
    for (size_t i = 0; i < tree.size(); ++i) all.source[i] = i;
    return all;
  }
  if (tree.empty()) return absl::InvalidArgumentError("empty tree");
  std::vector<std::string> keys;
  if (!patterns.empty()) keys = FlattenedKeys(tree);
  uint64_t key_bytes = 0, cost_per_byte = 0, cost_per_key = 0;
  for (const std::string& key : keys) key_bytes += key.size();
  for (const KeyPattern& p : patterns) {
    cost_per_byte += std::max<uint64_t>(p.cost_per_byte(), 1);
    cost_per_key += p.cost_per_key();
  }
  const uint64_t work = key_bytes * cost_per_byte + keys.size() * cost_per_key;
  if (work > kMaxSelectWork) {
    return absl::ResourceExhaustedError(
        absl::StrCat(patterns.size(), " key patterns over ", keys.size(), " keys of ", key_bytes,
                     " bytes would take ", work, " steps (max ", kMaxSelectWork,
                     "): use fewer or shorter patterns"));
  }
  Selector selector(tree, patterns, std::move(keys), also, cancelled);
  bool kept = false;
  // A leaf root has no key to match: the patterns cannot select it.
  selector.Visit(0, /*forced=*/false, &kept);
  if (selector.stopped()) return absl::CancelledError("selection cancelled");
  if (!kept) {
    std::vector<std::string> texts;
    size_t shown = 0;
    for (const auto& p : patterns) {
      if (shown++ == 8) {
        texts.push_back(absl::StrCat("... ", patterns.size() - 8, " more"));
        break;
      }
      texts.push_back(Excerpt(p.pattern(), 64));
    }
    return absl::NotFoundError(
        absl::StrCat("no key matches the patterns [", absl::StrJoin(texts, ", "), "]"));
  }
  return selector.Take();
}

}  // namespace ckpt
