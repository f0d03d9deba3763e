#ifndef CKPT_STORAGE_CODEC_H_
#define CKPT_STORAGE_CODEC_H_

// Pure encoders and decoders of the store's keys and values (no I/O). The
// layout they implement is described at the top of storage/store.h.
//
// Every decoder treats its input as untrusted: it is fully bounds-checked,
// never allocates more than the input could describe, and returns DataLoss
// on malformed input. Encoders assume valid arguments (names and tags contain
// no '\0', as ValidateName/ValidateTag guarantee).

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/retention.h"
#include "common/types.h"

namespace ckpt::storage {

/// Chunk ids are handed out in blocks of 2^kChunkIdBlockBits; an upload's
/// chunks take ids from blocks of its own.
inline constexpr uint64_t kChunkIdBlockBits = 20;
/// Number of chunk ids in one block.
inline constexpr uint64_t kChunkIdBlockSize = uint64_t{1} << kChunkIdBlockBits;

// ---------------------------------------------------------------------------
// Fixed-width integers.

/// 8 bytes, big-endian (so that byte order is numeric order).
std::string EncodeBigEndian64(uint64_t value);
/// Inverse of EncodeBigEndian64; DataLoss unless `bytes` is exactly 8 bytes.
absl::StatusOr<uint64_t> DecodeBigEndian64(absl::string_view bytes);

// ---------------------------------------------------------------------------
// Keys.

/// chunks CF: be64(chunk id).
std::string ChunkKey(uint64_t chunk_id);
/// Inverse of ChunkKey; DataLoss on a malformed key.
absl::StatusOr<uint64_t> ParseChunkKey(absl::string_view key);

/// refs CF: namespace \0 digest(16 bytes).
std::string RefKey(absl::string_view ns, const Digest& digest);
/// Prefix of all refs keys of `ns`: namespace \0.
std::string RefPrefix(absl::string_view ns);
/// Inverse of RefKey; DataLoss on a malformed key.
absl::StatusOr<std::pair<std::string, Digest>> ParseRefKey(absl::string_view key);

/// manifests CF: "v" name \0 be64(version) -> version record.
std::string VersionKey(absl::string_view name, uint64_t version);
/// "v" name \0: prefix of every version record of `name`.
std::string VersionPrefix(absl::string_view name);
/// "v" name_prefix: prefix of the version records of every name that starts
/// with `name_prefix` (empty: of every version record).
std::string VersionNamePrefix(absl::string_view name_prefix);
/// "v" name \1: the smallest key past every version record of `name` (and
/// before those of any name that sorts after it).
std::string VersionKeysAfter(absl::string_view name);
/// manifests CF: "m" name \0 be64(version) -> encoded Tree.
std::string ManifestKey(absl::string_view name, uint64_t version);
/// manifests CF: "n" name -> be64(next version number).
std::string CounterKey(absl::string_view name);
/// manifests CF: "r" name -> retention policy of `name`.
std::string RetentionKey(absl::string_view name);
/// Inverse of VersionKey (the key must start with "v"); DataLoss otherwise.
absl::StatusOr<std::pair<std::string, uint64_t>> ParseVersionKey(absl::string_view key);

/// tags CF: name \0 tag -> be64(version).
std::string TagKey(absl::string_view name, absl::string_view tag);
/// name \0: prefix of every tag of `name`.
std::string TagPrefix(absl::string_view name);
/// Inverse of TagKey: {name, tag}; DataLoss on a malformed key.
absl::StatusOr<std::pair<std::string, std::string>> ParseTagKey(absl::string_view key);

/// default CF: "p" be64(upload id) -> pending record.
std::string PendingKey(uint64_t upload_id);
/// "p": prefix of every pending record.
inline constexpr char kPendingPrefix[] = "p";
/// Inverse of PendingKey; DataLoss on a malformed key.
absl::StatusOr<uint64_t> ParsePendingKey(absl::string_view key);

/// default CF: "b" -> be64(first chunk-id block never handed out). Keeps chunk
/// ids from repeating across restarts even after GC removed the newest chunks.
inline constexpr char kNextBlockKey[] = "b";

/// default CF: "f" -> be64(on-disk format version of the store). Written when
/// a store is created; a store without it predates the key and has format 1.
inline constexpr char kFormatKey[] = "f";
/// The format this code reads and writes. Bump it with any change to the
/// layout in this file that older servers cannot read; Open refuses newer
/// formats and upgrades older ones it reads (from kOldestStoreFormat).
/// 2: manifests may hold tensor statistics (kFieldStats).
inline constexpr uint64_t kStoreFormatVersion = 2;
inline constexpr uint64_t kOldestStoreFormat = 1;

/// The smallest string greater than every string that starts with `prefix`
/// (empty if there is none, i.e. `prefix` is all 0xff bytes).
std::string PrefixSuccessor(absl::string_view prefix);

// ---------------------------------------------------------------------------
// Values.

/// refs CF value: where a chunk lives and how many versions reference it.
struct RefValue {
  uint64_t chunk_id = 0;  ///< Key of the bytes in the chunks CF.
  uint64_t length = 0;    ///< Bytes in the chunk.
  uint64_t refcount = 0;  ///< Versions using it; 0: garbage once unpinned.

  friend bool operator==(const RefValue& a, const RefValue& b) {
    return a.chunk_id == b.chunk_id && a.length == b.length && a.refcount == b.refcount;
  }
};
/// Format byte 1, then varints: chunk id, length, refcount.
std::string EncodeRefValue(const RefValue& value);
/// DataLoss("corrupt refs entry: ...") on malformed input.
absl::StatusOr<RefValue> DecodeRefValue(absl::string_view bytes);

/// An inclusive range of chunk ids [lo, hi].
struct ChunkIdRange {
  uint64_t lo = 0;
  uint64_t hi = 0;

  friend bool operator==(const ChunkIdRange& a, const ChunkIdRange& b) {
    return a.lo == b.lo && a.hi == b.hi;
  }
};

/// default CF value under PendingKey: the chunk ids an upload wrote that are
/// not committed yet, with the chunk and byte totals known when it was last
/// written (what garbage collection reports when it removes them).
struct PendingRecord {
  std::vector<ChunkIdRange> ranges;  ///< Whole id blocks the upload took.
  uint64_t chunks = 0;               ///< Chunks written (as last recorded).
  uint64_t bytes = 0;                ///< Their bytes.

  friend bool operator==(const PendingRecord& a, const PendingRecord& b) {
    return a.ranges == b.ranges && a.chunks == b.chunks && a.bytes == b.bytes;
  }
};
/// Format byte 1, varint range count, per range varints lo and hi - lo, then
/// varints chunks and bytes.
std::string EncodePendingRecord(const PendingRecord& record);
/// DataLoss("corrupt pending record: ...") on malformed input, including a
/// range whose end passes 2^64 - 1.
absl::StatusOr<PendingRecord> DecodePendingRecord(absl::string_view bytes);

/// Version record: every VersionInfo field except `tags` (which are derived
/// from the tags CF on read): format byte 1, then length-prefixed strings
/// and (zigzag) varints in field order.
std::string EncodeVersionRecord(const VersionInfo& info);
/// DataLoss("corrupt version record: ...") on malformed input. `tags` is
/// left empty.
absl::StatusOr<VersionInfo> DecodeVersionRecord(absl::string_view bytes);

/// Retention policy: format byte 1, then varints keep_last, keep_best,
/// zigzag keep_every_steps, the metric as a length-prefixed string and a
/// byte for higher_is_better.
std::string EncodeRetentionPolicy(const RetentionPolicy& policy);
/// DataLoss("corrupt retention policy: ...") on malformed input.
absl::StatusOr<RetentionPolicy> DecodeRetentionPolicy(absl::string_view bytes);

/// Manifest: a compact binary encoding of a Tree (format byte 1, then a
/// varint node count, then per node its kind, key and the fields that differ
/// from a default Node). Round-trips every Node field bit-exactly (doubles
/// included, NaN payloads and -0.0 too).
std::string EncodeTree(const Tree& tree);
/// DataLoss("corrupt manifest: ...") on any malformed input (truncation,
/// unknown format/kind/dtype/flags, out-of-range values, trailing bytes).
/// Does not check the tree's structure; use ValidateTree for that.
absl::StatusOr<Tree> DecodeTree(absl::string_view bytes);

}  // namespace ckpt::storage

#endif  // CKPT_STORAGE_CODEC_H_
