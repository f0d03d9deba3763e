#ifndef CKPT_COMMON_RETENTION_H_
#define CKPT_COMMON_RETENTION_H_

// Retention policies: which versions of one checkpoint to keep, like Orbax's
// CheckpointManager (max_to_keep, keep_period, best_fn / best_mode).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/types.h"

namespace ckpt {

/// A retention policy of one checkpoint name. A version is kept if any rule
/// keeps it; the others are deleted when the policy is applied (after each
/// save of that name, or on request). Whatever the rules, a version with a
/// user tag and the newest version (`latest`, so never the only one) are
/// always kept. A policy with neither keep_last nor keep_best set keeps
/// everything (it is "off").
struct RetentionPolicy {
  /// Keep the newest N versions. Default: 0 (no such rule).
  uint32_t keep_last = 0;
  /// Also keep versions whose step is a positive multiple of K (Orbax's
  /// keep_period). Needs keep_last or keep_best. Default: 0 (no such rule).
  int64_t keep_every_steps = 0;
  /// Keep the N best versions by `metric`. Default: 0 (no such rule).
  uint32_t keep_best = 0;
  /// Metadata key whose value is a number (e.g. "loss", set at save time);
  /// versions without it, or whose value is no finite number, are never
  /// among the best. Required with keep_best. Default: "".
  std::string metric;
  /// Higher metric values are better (accuracy). Default: false (lower is
  /// better, as for a loss).
  bool higher_is_better = false;

  /// Whether the policy deletes anything at all.
  bool enabled() const { return keep_last > 0 || keep_best > 0; }
  friend bool operator==(const RetentionPolicy& a, const RetentionPolicy& b) {
    return a.keep_last == b.keep_last && a.keep_every_steps == b.keep_every_steps &&
           a.keep_best == b.keep_best && a.metric == b.metric &&
           a.higher_is_better == b.higher_is_better;
  }
};

/// InvalidArgument saying why, for: keep_every_steps < 0; keep_every_steps
/// without keep_last or keep_best; keep_best without a metric; a metric
/// without keep_best; a metric longer than 1024 bytes.
absl::Status ValidateRetentionPolicy(const RetentionPolicy& policy);

/// The version numbers `policy` deletes from `versions` (one checkpoint's
/// versions with their tags, any order), oldest first. Tags other than
/// `latest` keep a version; the highest version number is always kept.
std::vector<uint64_t> VersionsToPrune(absl::Span<const VersionInfo> versions,
                                      const RetentionPolicy& policy);

/// "keep_last=3 keep_every_steps=1000 keep_best=1 metric=loss (lower is
/// better)", or "none" when the policy is off.
std::string DescribeRetentionPolicy(const RetentionPolicy& policy);

}  // namespace ckpt

#endif  // CKPT_COMMON_RETENTION_H_
