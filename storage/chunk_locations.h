#ifndef CKPT_STORAGE_CHUNK_LOCATIONS_H_
#define CKPT_STORAGE_CHUNK_LOCATIONS_H_

// Internal to the RocksDB store: where the chunks of recent commits and
// reads are (chunk id and length, by namespace and digest), so that a load
// finds its small chunks without a refs lookup each (a quarter of the
// server's CPU in a load of 20,000 small tensors right after their save was
// those lookups).
//
// Only a hint, and always a safe one: chunk ids are never reused and the
// bytes under an id never change, so an entry either still names the chunk
// or names one that is gone (collected since). A reader checks every chunk
// it reads against its digest and length, and looks up the refs entry when
// the hinted chunk is not there.

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/types.h"

namespace ckpt::storage::internal {

class ChunkLocations {
 public:
  struct Location {
    uint64_t chunk_id = 0;
    uint64_t length = 0;
  };

  /// Holds at most `capacity` entries (a few tens of bytes each); the
  /// oldest half goes when the newest reaches half of it.
  explicit ChunkLocations(size_t capacity);

  /// Records where each (digest, location) of namespace `ns` is.
  void Add(absl::string_view ns, absl::Span<const std::pair<Digest, Location>> found);

  /// The recorded location of each digest of `ns`, or nullopt. An entry
  /// found among the older half is kept as a new one.
  std::vector<std::optional<Location>> Find(absl::string_view ns, absl::Span<const Digest> digests);

  /// Entries held now (for tests).
  size_t size() const;

 private:
  // Namespaces are told apart by a 64-bit hash of their name: two that
  // collide could at worst hand a reader the chunk of the same digest
  // (the same bytes) stored by the other.
  struct Key {
    uint64_t ns;
    Digest digest;
    friend bool operator==(const Key& a, const Key& b) {
      return a.ns == b.ns && a.digest == b.digest;
    }
    template <typename H>
    friend H AbslHashValue(H h, const Key& k) {
      return H::combine(std::move(h), k.ns, k.digest);
    }
  };
  using Map = absl::flat_hash_map<Key, Location>;

  void InsertLocked(const Key& key, const Location& location);

  const size_t half_;
  mutable std::mutex mu_;
  // Lookups see both; when newer_ holds half_ entries it becomes older_.
  Map newer_;
  Map older_;
};

}  // namespace ckpt::storage::internal

#endif  // CKPT_STORAGE_CHUNK_LOCATIONS_H_
