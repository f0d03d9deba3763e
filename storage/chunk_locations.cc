#include "storage/chunk_locations.h"

#include <algorithm>

#include "absl/hash/hash.h"

namespace ckpt::storage::internal {

ChunkLocations::ChunkLocations(size_t capacity) : half_(std::max<size_t>(1, capacity / 2)) {}

void ChunkLocations::Add(absl::string_view ns,
                         absl::Span<const std::pair<Digest, Location>> found) {
  const uint64_t ns_hash = absl::HashOf(ns);
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [digest, location] : found) InsertLocked(Key{ns_hash, digest}, location);
}

void ChunkLocations::InsertLocked(const Key& key, const Location& location) {
  if (newer_.size() >= half_ && !newer_.contains(key)) {
    older_ = std::move(newer_);
    newer_ = Map();
  }
  newer_.insert_or_assign(key, location);
}

std::vector<std::optional<ChunkLocations::Location>> ChunkLocations::Find(
    absl::string_view ns, absl::Span<const Digest> digests) {
  const uint64_t ns_hash = absl::HashOf(ns);
  std::vector<std::optional<Location>> out(digests.size());
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < digests.size(); ++i) {
    const Key key{ns_hash, digests[i]};
    if (auto it = newer_.find(key); it != newer_.end()) {
      out[i] = it->second;
    } else if (auto old = older_.find(key); old != older_.end()) {
      const Location location = old->second;  // InsertLocked may drop older_
      out[i] = location;
      InsertLocked(key, location);
    }
  }
  return out;
}

size_t ChunkLocations::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return newer_.size() + older_.size();
}

}  // namespace ckpt::storage::internal
