#include "common/retention.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/names.h"

namespace ckpt {
namespace {

// The metric of a version as a finite number, if it has one.
std::optional<double> MetricOf(const VersionInfo& v, const std::string& metric) {
  auto it = v.metadata.find(metric);
  double value = 0;
  if (it == v.metadata.end() || !absl::SimpleAtod(it->second, &value) || !std::isfinite(value)) {
    return std::nullopt;
  }
  return value;
}

}  // namespace

absl::Status ValidateRetentionPolicy(const RetentionPolicy& policy) {
  if (policy.keep_every_steps < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("keep_every_steps must not be negative, got ", policy.keep_every_steps));
  }
  if (policy.keep_every_steps > 0 && !policy.enabled()) {
    return absl::InvalidArgumentError(
        "keep_every_steps only adds to keep_last or keep_best: set one of them");
  }
  if (policy.keep_best > 0 && policy.metric.empty()) {
    return absl::InvalidArgumentError("keep_best needs a metric (a metadata key such as 'loss')");
  }
  if (policy.keep_best == 0 && !policy.metric.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("metric '", policy.metric.substr(0, 64), "' given without keep_best"));
  }
  if (policy.metric.size() > 1024) {
    return absl::InvalidArgumentError("metric longer than 1024 bytes");
  }
  return absl::OkStatus();
}

std::vector<uint64_t> VersionsToPrune(absl::Span<const VersionInfo> versions,
                                      const RetentionPolicy& policy) {
  if (!policy.enabled() || versions.empty()) return {};
  std::vector<const VersionInfo*> newest_first;
  for (const VersionInfo& v : versions) newest_first.push_back(&v);
  std::sort(newest_first.begin(), newest_first.end(),
            [](const VersionInfo* a, const VersionInfo* b) { return a->version > b->version; });

  absl::flat_hash_set<uint64_t> keep;
  keep.insert(newest_first.front()->version);  // latest
  for (size_t i = 0; i < newest_first.size() && i < policy.keep_last; ++i) {
    keep.insert(newest_first[i]->version);
  }
  for (const VersionInfo* v : newest_first) {
    for (const std::string& tag : v->tags) {
      if (tag != kLatestTag) keep.insert(v->version);
    }
    if (policy.keep_every_steps > 0 && v->step > 0 && v->step % policy.keep_every_steps == 0) {
      keep.insert(v->version);
    }
  }
  if (policy.keep_best > 0) {
    std::vector<std::pair<double, uint64_t>> scored;
    for (const VersionInfo* v : newest_first) {
      if (auto m = MetricOf(*v, policy.metric)) {
        scored.emplace_back(policy.higher_is_better ? -*m : *m, v->version);
      }
    }
    // Best first; of equal values the newer version wins.
    std::sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first < b.first : a.second > b.second;
    });
    for (size_t i = 0; i < scored.size() && i < policy.keep_best; ++i) {
      keep.insert(scored[i].second);
    }
  }
  std::vector<uint64_t> prune;
  for (auto it = newest_first.rbegin(); it != newest_first.rend(); ++it) {
    if (!keep.contains((*it)->version)) prune.push_back((*it)->version);
  }
  return prune;
}

std::string DescribeRetentionPolicy(const RetentionPolicy& policy) {
  if (!policy.enabled()) return "none";
  std::string out;
  auto add = [&out](const std::string& part) { out += out.empty() ? part : " " + part; };
  if (policy.keep_last > 0) add(absl::StrCat("keep_last=", policy.keep_last));
  if (policy.keep_every_steps > 0) add(absl::StrCat("keep_every_steps=", policy.keep_every_steps));
  if (policy.keep_best > 0) {
    add(absl::StrCat("keep_best=", policy.keep_best, " metric=", policy.metric, " (",
                     policy.higher_is_better ? "higher" : "lower", " is better)"));
  }
  return out;
}

}  // namespace ckpt
