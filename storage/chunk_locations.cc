#include "storage/chunk_locations.h"

#include <algorithm>

namespace ckpt::storage::internal {

ChunkLocations::ChunkLocations(size_t capacity) : half_(std::max<size_t>(1, capacity / 2)) {}

uint64_t ChunkLocations::forgets() const {
  std::lock_guard<std::mutex> lock(mu_);
  return forgets_;
}

void ChunkLocations::Add(absl::string_view ns, absl::Span<const std::pair<Digest, Location>> found,
                         std::optional<uint64_t> seen_forgets) {
  if (found.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (seen_forgets.has_value() && (*seen_forgets != forgets_ || forgetting_)) return;
  const uint32_t id = NamespaceLocked(ns);
  for (const auto& [digest, location] : found) InsertLocked(Key{id, digest}, location);
}

std::vector<std::optional<ChunkLocations::Location>> ChunkLocations::Find(
    absl::string_view ns, absl::Span<const Digest> digests) {
  std::vector<std::optional<Location>> out(digests.size());
  std::lock_guard<std::mutex> lock(mu_);
  const std::optional<uint32_t> id = FindNamespaceLocked(ns);
  if (!id.has_value()) return out;
  for (size_t i = 0; i < digests.size(); ++i) {
    const Key key{*id, digests[i]};
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

void ChunkLocations::Forget(absl::Span<const std::pair<std::string, Digest>> gone,
                            const std::function<void()>& drop) {
  if (gone.empty()) {
    drop();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++forgets_;
    forgetting_ = true;
    for (const auto& [ns, digest] : gone) {
      const std::optional<uint32_t> id = FindNamespaceLocked(ns);
      if (!id.has_value()) continue;
      newer_.erase(Key{*id, digest});
      older_.erase(Key{*id, digest});
    }
  }
  drop();
  std::lock_guard<std::mutex> lock(mu_);
  ++forgets_;
  forgetting_ = false;
}

size_t ChunkLocations::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return newer_.size() + older_.size();
}

std::optional<uint32_t> ChunkLocations::FindNamespaceLocked(absl::string_view ns) const {
  auto it = namespaces_.find(ns);
  if (it == namespaces_.end()) return std::nullopt;
  return it->second;
}

uint32_t ChunkLocations::NamespaceLocked(absl::string_view ns) {
  if (std::optional<uint32_t> id = FindNamespaceLocked(ns)) return *id;
  if (namespaces_.size() >= kMaxNamespaces) {
    namespaces_.clear();
    newer_ = Map();
    older_ = Map();
  }
  const auto id = static_cast<uint32_t>(namespaces_.size());
  namespaces_.emplace(std::string(ns), id);
  return id;
}

void ChunkLocations::InsertLocked(const Key& key, const Location& location) {
  if (newer_.size() >= half_ && !newer_.contains(key)) {
    older_ = std::move(newer_);
    newer_ = Map();
  }
  newer_.insert_or_assign(key, location);
}

}  // namespace ckpt::storage::internal
