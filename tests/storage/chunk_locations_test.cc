// The RocksDB store's record of where recent chunks are
// (storage/chunk_locations.h): found by namespace and digest, bounded, the
// oldest half dropped first, entries in use kept, forgotten entries gone
// for good.

#include "storage/chunk_locations.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ckpt::storage::internal {
namespace {

using Location = ChunkLocations::Location;

Digest D(int i) { return Digest::Of(absl::StrCat("chunk ", i)); }

void AddOne(ChunkLocations& locations, const std::string& ns, int i) {
  const std::pair<Digest, Location> entry{D(i), Location{uint64_t(100 + i), uint64_t(i)}};
  locations.Add(ns, {&entry, 1});
}

std::optional<Location> FindOne(ChunkLocations& locations, const std::string& ns, int i) {
  const Digest digest = D(i);
  return locations.Find(ns, {&digest, 1})[0];
}

TEST(ChunkLocationsTest, FindsWhatWasAddedByNamespaceAndDigest) {
  ChunkLocations locations(100);
  AddOne(locations, "a", 1);
  AddOne(locations, "a", 2);
  const std::vector<Digest> asked = {D(2), D(3), D(1)};
  const std::vector<std::optional<Location>> found = locations.Find("a", asked);
  ASSERT_EQ(found.size(), 3u);
  ASSERT_TRUE(found[0].has_value());
  EXPECT_EQ(found[0]->chunk_id, 102u);
  EXPECT_EQ(found[0]->length, 2u);
  EXPECT_FALSE(found[1].has_value());
  ASSERT_TRUE(found[2].has_value());
  EXPECT_EQ(found[2]->chunk_id, 101u);
  // Another namespace's chunk of the same digest is its own.
  EXPECT_FALSE(FindOne(locations, "b", 1).has_value());
  // A later location replaces the earlier one.
  const std::pair<Digest, Location> moved{D(1), Location{7, 1}};
  locations.Add("a", {&moved, 1});
  EXPECT_EQ(FindOne(locations, "a", 1)->chunk_id, 7u);
}

TEST(ChunkLocationsTest, HoldsAtMostItsCapacityDroppingTheOldestHalfFirst) {
  ChunkLocations locations(10);
  for (int i = 0; i < 1000; ++i) {
    AddOne(locations, "a", i);
    ASSERT_LE(locations.size(), 10u) << "after " << i + 1;
  }
  // The last five are in the newer half, the five before in the older one
  // (looked at newest first: a find in the older half moves the entry).
  EXPECT_EQ(locations.size(), 10u);
  EXPECT_FALSE(FindOne(locations, "a", 989).has_value());
  EXPECT_FALSE(FindOne(locations, "a", 0).has_value());
  EXPECT_TRUE(FindOne(locations, "a", 999).has_value());
  EXPECT_TRUE(FindOne(locations, "a", 995).has_value());
  EXPECT_TRUE(FindOne(locations, "a", 990).has_value());
}

TEST(ChunkLocationsTest, AnEntryFoundAmongTheOlderHalfIsKept) {
  ChunkLocations locations(10);
  for (int i = 0; i < 10; ++i) AddOne(locations, "a", i);  // 0-4 older, 5-9 newer
  // 0 joins the newer half, which was full: 5-9 become the older one and
  // 1-4 go.
  ASSERT_TRUE(FindOne(locations, "a", 0).has_value());
  for (int i = 10; i < 14; ++i) AddOne(locations, "a", i);
  EXPECT_TRUE(FindOne(locations, "a", 0).has_value());
  EXPECT_FALSE(FindOne(locations, "a", 1).has_value());
}

TEST(ChunkLocationsTest, ForgottenEntriesGoAndReadersThatLookedBeforeCannotAddThemBack) {
  ChunkLocations locations(100);
  AddOne(locations, "a", 1);
  AddOne(locations, "a", 2);
  const uint64_t seen = locations.forgets();  // a reader's, before its lookups
  const std::pair<Digest, Location> stale{D(1), Location{101, 1}};
  bool dropped = false;
  const std::vector<std::pair<std::string, Digest>> gone = {{"a", D(1)}, {"b", D(2)}};
  locations.Forget(gone, [&] {
    dropped = true;
    // While the refs entries go: readers are not held off (this would
    // deadlock otherwise) and find the entry gone; none may add it back,
    // whenever it took its count.
    EXPECT_FALSE(FindOne(locations, "a", 1).has_value());
    locations.Add("a", {&stale, 1}, seen);
    locations.Add("a", {&stale, 1}, locations.forgets());
    EXPECT_FALSE(FindOne(locations, "a", 1).has_value());
  });
  EXPECT_TRUE(dropped);
  EXPECT_FALSE(FindOne(locations, "a", 1).has_value());
  EXPECT_TRUE(FindOne(locations, "a", 2).has_value());  // ("b", 2) was forgotten, not ("a", 2)
  locations.Add("a", {&stale, 1}, seen);                // looked up before the Forget
  EXPECT_FALSE(FindOne(locations, "a", 1).has_value());
  locations.Add("a", {&stale, 1}, locations.forgets());  // looked up after it
  EXPECT_TRUE(FindOne(locations, "a", 1).has_value());
  // Nothing to forget: `drop` runs all the same, nothing else changes.
  const uint64_t before = locations.forgets();
  dropped = false;
  locations.Forget({}, [&] { dropped = true; });
  EXPECT_TRUE(dropped);
  EXPECT_EQ(locations.forgets(), before);
}

TEST(ChunkLocationsTest, ManyNamespacesStartItAfresh) {
  ChunkLocations locations(1 << 20);
  for (int ns = 0; ns < 5000; ++ns) AddOne(locations, absl::StrCat("ns", ns), ns);
  // Past 4,096 namespaces everything went once.
  EXPECT_LT(locations.size(), 4096u);
  EXPECT_FALSE(FindOne(locations, "ns0", 0).has_value());
  EXPECT_TRUE(FindOne(locations, "ns4999", 4999).has_value());
}

}  // namespace
}  // namespace ckpt::storage::internal
