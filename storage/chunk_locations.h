#ifndef CKPT_STORAGE_CHUNK_LOCATIONS_H_
#define CKPT_STORAGE_CHUNK_LOCATIONS_H_

// Internal to the RocksDB store: where the small chunks of recent commits
// and reads are, so that a load reads them without a refs lookup each (in a
// load of 20,000 small tensors right after their save, those lookups took a
// quarter of the server's CPU).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/types.h"

namespace ckpt::storage::internal {

/// Chunk id and length by namespace and digest, for at most `capacity`
/// chunks (~82 bytes of memory each when full, ~100 while a half grows).
/// Thread-safe; no call waits for anything but the others' short critical
/// sections.
///
/// Only a hint, and a safe one: chunk ids are never reused and the bytes
/// under an id never change, so an entry names either the chunk or an id
/// that no longer holds anything. Readers check every chunk they read
/// against its digest and length and look up its refs entry when it is not
/// where an entry says. Entries go with their refs entries (Forget, by
/// garbage collection): an entry Find returns belonged to a refs entry that
/// still existed when Find ran, so a chunk is read through one only where a
/// refs lookup could have found it.
class ChunkLocations {
 public:
  struct Location {
    uint64_t chunk_id = 0;
    uint64_t length = 0;
  };

  explicit ChunkLocations(size_t capacity);

  /// Moves when a Forget begins and when it ends. A reader takes it before
  /// the snapshot its refs lookups read, and passes it to Add: a count
  /// taken before a Forget, or during one, is refused; one taken after it
  /// comes with a snapshot in which the forgotten refs entries are gone.
  uint64_t forgets() const;

  /// Records where each (digest, location) of namespace `ns` is; when
  /// `seen_forgets` is given, only if no Forget began since the reader took
  /// that count, nor is under way (what it looked up may be on its way out).
  void Add(absl::string_view ns, absl::Span<const std::pair<Digest, Location>> found,
           std::optional<uint64_t> seen_forgets = std::nullopt);

  /// The recorded location of each digest of `ns`, or nullopt. An entry
  /// found among the older half is kept as a new one.
  std::vector<std::optional<Location>> Find(absl::string_view ns, absl::Span<const Digest> digests);

  /// Drops the entries of these (namespace, digest) pairs, then runs `drop`
  /// (which deletes their refs entries). Until `drop` returns, readers'
  /// Adds are refused: one whose lookups came before the deletion cannot put
  /// an entry back. Readers are not held off meanwhile. Not concurrent with
  /// itself or with the Adds without `seen_forgets` (callers hold the
  /// store's commit mutex for both).
  void Forget(absl::Span<const std::pair<std::string, Digest>> gone,
              const std::function<void()>& drop);

  /// Entries held now (for tests).
  size_t size() const;

 private:
  // Namespaces by a number of their own (at most kMaxNamespaces; past it
  // everything is dropped and numbering starts again).
  static constexpr size_t kMaxNamespaces = 4096;
  struct Key {
    uint32_t ns;
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

  std::optional<uint32_t> FindNamespaceLocked(absl::string_view ns) const;
  uint32_t NamespaceLocked(absl::string_view ns);
  void InsertLocked(const Key& key, const Location& location);

  const size_t half_;
  mutable std::mutex mu_;
  uint64_t forgets_ = 0;
  bool forgetting_ = false;  // a Forget's `drop` is running
  absl::flat_hash_map<std::string, uint32_t> namespaces_;
  // Lookups see both; when newer_ holds half_ entries it becomes older_.
  Map newer_;
  Map older_;
};

}  // namespace ckpt::storage::internal

#endif  // CKPT_STORAGE_CHUNK_LOCATIONS_H_
