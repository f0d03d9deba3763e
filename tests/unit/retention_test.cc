// Retention policies (common/retention): which versions a policy deletes.

#include "common/retention.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace ckpt {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

VersionInfo V(uint64_t version, int64_t step = 0, std::map<std::string, std::string> meta = {},
              std::vector<std::string> tags = {}) {
  VersionInfo v;
  v.name = "team/model";
  v.version = version;
  v.step = step;
  v.metadata = std::move(meta);
  v.tags = std::move(tags);
  return v;
}

TEST(RetentionTest, OffPolicyKeepsEverything) {
  std::vector<VersionInfo> versions = {V(1), V(2), V(3)};
  EXPECT_THAT(VersionsToPrune(versions, {}), IsEmpty());
  EXPECT_EQ(DescribeRetentionPolicy({}), "none");
}

TEST(RetentionTest, KeepLastDeletesTheOldestInAnyInputOrder) {
  std::vector<VersionInfo> versions = {V(4), V(1), V(6), V(2), V(5), V(3)};
  RetentionPolicy policy;
  policy.keep_last = 3;
  EXPECT_THAT(VersionsToPrune(versions, policy), ElementsAre(1, 2, 3));
}

TEST(RetentionTest, UserTagsKeepAVersionLatestDoesNotCount) {
  std::vector<VersionInfo> versions = {V(1), V(2, 0, {}, {"best"}), V(3), V(4, 0, {}, {"latest"})};
  RetentionPolicy policy;
  policy.keep_last = 1;
  EXPECT_THAT(VersionsToPrune(versions, policy), ElementsAre(1, 3));
}

TEST(RetentionTest, KeepEveryStepsAddsMultiplesOfTheStep) {
  std::vector<VersionInfo> versions = {V(1, 500),  V(2, 1000), V(3, 1500),
                                       V(4, 2000), V(5, 2500), V(6, 0)};
  RetentionPolicy policy;
  policy.keep_last = 1;
  policy.keep_every_steps = 1000;
  // Step 0 is not a kept multiple; version 6 stays as the newest.
  EXPECT_THAT(VersionsToPrune(versions, policy), ElementsAre(1, 3, 5));
}

TEST(RetentionTest, KeepBestByLowerLossIgnoresVersionsWithoutANumber) {
  std::vector<VersionInfo> versions = {V(1, 0, {{"loss", "0.9"}}), V(2, 0, {{"loss", "0.3"}}),
                                       V(3, 0, {{"loss", "0.5"}}), V(4, 0, {{"loss", "nan"}}),
                                       V(5, 0, {{"loss", "abc"}}), V(6, 0, {{"acc", "0.1"}}),
                                       V(7, 0, {{"loss", "0.4"}})};
  RetentionPolicy policy;
  policy.keep_best = 2;
  policy.metric = "loss";
  // Best two: 0.3 (v2) and 0.4 (v7, also the newest).
  EXPECT_THAT(VersionsToPrune(versions, policy), ElementsAre(1, 3, 4, 5, 6));
  EXPECT_EQ(DescribeRetentionPolicy(policy), "keep_best=2 metric=loss (lower is better)");
}

TEST(RetentionTest, KeepBestByHigherAccuracyAndTiesGoToTheNewer) {
  std::vector<VersionInfo> versions = {V(1, 0, {{"acc", "0.7"}}), V(2, 0, {{"acc", "0.9"}}),
                                       V(3, 0, {{"acc", "0.9"}}), V(4, 0, {{"acc", "0.2"}})};
  RetentionPolicy policy;
  policy.keep_best = 1;
  policy.metric = "acc";
  policy.higher_is_better = true;
  EXPECT_THAT(VersionsToPrune(versions, policy), ElementsAre(1, 2));
}

TEST(RetentionTest, RulesCombineAndTheOnlyVersionStays) {
  RetentionPolicy policy;
  policy.keep_last = 2;
  policy.keep_every_steps = 100;
  policy.keep_best = 1;
  policy.metric = "loss";
  std::vector<VersionInfo> one = {V(9, 7, {{"loss", "5"}})};
  EXPECT_THAT(VersionsToPrune(one, policy), IsEmpty());
  std::vector<VersionInfo> versions = {V(1, 100, {{"loss", "9"}}), V(2, 150, {{"loss", "0.1"}}),
                                       V(3, 170, {{"loss", "8"}}), V(4, 190, {{"loss", "7"}}),
                                       V(5, 210, {{"loss", "6"}}), V(6, 230, {{"loss", "5"}})};
  // v1 by step, v2 best, v5 and v6 the last two.
  EXPECT_THAT(VersionsToPrune(versions, policy), ElementsAre(3, 4));
  EXPECT_EQ(DescribeRetentionPolicy(policy),
            "keep_last=2 keep_every_steps=100 keep_best=1 metric=loss (lower is better)");
}

TEST(RetentionTest, InvalidPoliciesSayWhy) {
  RetentionPolicy p;
  p.keep_every_steps = 10;
  EXPECT_EQ(ValidateRetentionPolicy(p).message(),
            "keep_every_steps only adds to keep_last or keep_best: set one of them");
  p = {};
  p.keep_last = 1;
  p.keep_every_steps = -5;
  EXPECT_EQ(ValidateRetentionPolicy(p).message(), "keep_every_steps must not be negative, got -5");
  p = {};
  p.keep_best = 2;
  EXPECT_EQ(ValidateRetentionPolicy(p).message(),
            "keep_best needs a metric (a metadata key such as 'loss')");
  p = {};
  p.keep_last = 2;
  p.metric = "loss";
  EXPECT_EQ(ValidateRetentionPolicy(p).message(), "metric 'loss' given without keep_best");
  EXPECT_EQ(ValidateRetentionPolicy(p).code(), absl::StatusCode::kInvalidArgument);
  p.keep_best = 1;
  EXPECT_TRUE(ValidateRetentionPolicy(p).ok());
  EXPECT_TRUE(ValidateRetentionPolicy({}).ok());
}

}  // namespace
}  // namespace ckpt
