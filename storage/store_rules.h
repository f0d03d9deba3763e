#ifndef CKPT_STORAGE_STORE_RULES_H_
#define CKPT_STORAGE_STORE_RULES_H_

// The rules every Store backend applies the same way (the RocksDB store,
// rocksdb_*.cc, and the RADOS store, rados_*.cc): what a commit must hold,
// how a new version's record is filled in, and the messages of the errors a
// user sees. Internal to storage/.

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/types.h"
#include "storage/store.h"

namespace ckpt::storage::internal {

/// 'text', as names and tags are quoted in messages.
std::string Quote(absl::string_view s);

/// NotFound "checkpoint 'NAME' not found".
absl::Status CheckpointNotFound(absl::string_view name);

/// NotFound "version V of 'NAME' not found" (the checkpoint exists).
absl::Status VersionNotFound(absl::string_view name, uint64_t version);

/// NotFound "tag 'TAG' of 'NAME' not found".
absl::Status TagNotFound(absl::string_view name, absl::string_view tag);

/// NotFound "chunk D not found in namespace 'NS'".
absl::Status ChunkNotFound(absl::string_view ns, const Digest& digest);

/// DataLoss "chunk D checksum mismatch" (and `out` cleared) unless `out`
/// holds `length` bytes whose digest is `digest`: every chunk read is
/// checked so.
absl::Status VerifyChunk(const Digest& digest, uint64_t length, std::string* out);
// VerifyChunk of bytes that are not the caller's to clear.
absl::Status VerifyChunkBytes(const Digest& digest, uint64_t length, absl::string_view bytes);

/// The checks of Upload::PutChunk on the chunk itself: InvalidArgument if it
/// has more than `max_chunk_bytes` or `digest` is not its digest.
absl::Status CheckChunk(const Digest& digest, absl::Span<const uint8_t> data,
                        uint32_t max_chunk_bytes);

/// "checkpoint 'NAME' version V", the context of errors about one version.
std::string VersionContext(absl::string_view name, uint64_t version);

/// ResourceExhausted "'NAME' would have more than 1000 tags; remove some
/// first".
absl::Status TooManyTags(absl::string_view name);

/// FailedPrecondition of DeleteVersion for a version user tags point at.
absl::Status TaggedVersion(absl::string_view name, uint64_t version,
                           const std::vector<std::string>& tags);

/// `tags` sorted and unique, with "latest" added when `is_latest`.
std::vector<std::string> WithLatest(std::vector<std::string> tags, bool is_latest);

/// Each digest of `tree` once, with the first node that uses it.
std::vector<std::pair<Digest, size_t>> DistinctDigests(const Tree& tree);

/// The checks of Commit that need no stored state: the name, the tags, the
/// metadata and the tree (ValidateTree with `max_chunk_bytes`), each
/// InvalidArgument naming the checkpoint.
absl::Status ValidateCommitSpec(const CommitSpec& spec, uint32_t max_chunk_bytes);

/// FailedPrecondition naming the tensor and the chunk if a chunk of `tree`
/// is used with another length than `lengths` holds for its digest.
absl::Status CheckChunkLengths(const Tree& tree,
                               const absl::flat_hash_map<Digest, uint64_t>& lengths);

/// FailedPrecondition "tensor 'KEY': chunk D was never uploaded" for the
/// chunk of `tree` node `node`.
absl::Status ChunkNeverUploaded(const Tree& tree, size_t node, const Digest& digest);

/// The record of version `version` of spec.name committed now: counts and
/// sizes from its tree, `new_bytes` as given. Moves spec.metadata; no tags.
VersionInfo NewVersionInfo(CommitSpec& spec, uint64_t version, uint64_t new_bytes);

/// Store::Prune over any store: its retention policy applied to its
/// versions (VersionsToPrune), each deletion on its own (a version tagged or
/// deleted since the listing is skipped).
absl::StatusOr<std::vector<uint64_t>> PruneVersions(Store& store, absl::string_view name,
                                                    bool dry_run);

}  // namespace ckpt::storage::internal

#endif  // CKPT_STORAGE_STORE_RULES_H_
