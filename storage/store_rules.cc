#include "storage/store_rules.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/names.h"
#include "common/retention.h"
#include "common/status_macros.h"

namespace ckpt::storage::internal {

std::string Quote(absl::string_view s) { return absl::StrCat("'", s, "'"); }

absl::Status CheckpointNotFound(absl::string_view name) {
  return absl::NotFoundError(absl::StrCat("checkpoint ", Quote(name), " not found"));
}

absl::Status VersionNotFound(absl::string_view name, uint64_t version) {
  return absl::NotFoundError(absl::StrCat("version ", version, " of ", Quote(name), " not found"));
}

absl::Status TagNotFound(absl::string_view name, absl::string_view tag) {
  return absl::NotFoundError(absl::StrCat("tag ", Quote(tag), " of ", Quote(name), " not found"));
}

absl::Status ChunkNotFound(absl::string_view ns, const Digest& digest) {
  return absl::NotFoundError(
      absl::StrCat("chunk ", digest.Hex(), " not found in namespace ", Quote(ns)));
}

absl::Status VerifyChunkBytes(const Digest& digest, uint64_t length, absl::string_view bytes) {
  if (bytes.size() != length || Digest::Of(bytes) != digest) {
    return absl::DataLossError(absl::StrCat("chunk ", digest.Hex(), " checksum mismatch"));
  }
  return absl::OkStatus();
}

absl::Status VerifyChunk(const Digest& digest, uint64_t length, std::string* out) {
  absl::Status status = VerifyChunkBytes(digest, length, *out);
  if (!status.ok()) out->clear();
  return status;
}

absl::Status CheckChunk(const Digest& digest, absl::Span<const uint8_t> data,
                        uint32_t max_chunk_bytes) {
  if (data.size() > max_chunk_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("chunk ", digest.Hex(), " has ", data.size(),
                                                   " bytes, more than the ", max_chunk_bytes,
                                                   "-byte limit"));
  }
  const Digest computed = Digest::Of(data);
  if (computed != digest) {
    return absl::InvalidArgumentError(absl::StrCat("chunk digest mismatch: declared ", digest.Hex(),
                                                   ", computed ", computed.Hex()));
  }
  return absl::OkStatus();
}

std::string VersionContext(absl::string_view name, uint64_t version) {
  return absl::StrCat("checkpoint ", Quote(name), " version ", version);
}

absl::Status TooManyTags(absl::string_view name) {
  return absl::ResourceExhaustedError(absl::StrCat(Quote(name), " would have more than ",
                                                   kMaxTagsPerName, " tags; remove some first"));
}

absl::Status TaggedVersion(absl::string_view name, uint64_t version,
                           const std::vector<std::string>& tags) {
  return absl::FailedPreconditionError(absl::StrCat("version ", version, " of ", Quote(name),
                                                    " is tagged '", absl::StrJoin(tags, "', '"),
                                                    "'; use force"));
}

std::vector<std::string> WithLatest(std::vector<std::string> tags, bool is_latest) {
  if (is_latest) tags.emplace_back(kLatestTag);
  std::sort(tags.begin(), tags.end());
  tags.erase(std::unique(tags.begin(), tags.end()), tags.end());
  return tags;
}

std::vector<std::pair<Digest, size_t>> DistinctDigests(const Tree& tree) {
  std::vector<std::pair<Digest, size_t>> out;
  absl::flat_hash_set<Digest> seen;
  for (size_t i = 0; i < tree.size(); ++i) {
    for (const Digest& d : tree[i].data.chunks) {
      if (seen.insert(d).second) out.emplace_back(d, i);
    }
  }
  return out;
}

absl::Status ValidateCommitSpec(const CommitSpec& spec, uint32_t max_chunk_bytes) {
  CKPT_RETURN_IF_ERROR(ValidateName(spec.name));
  for (const std::string& tag : spec.tags) CKPT_RETURN_IF_ERROR(ValidateUserTag(tag));
  const std::string context = absl::StrCat("checkpoint ", Quote(spec.name));
  CKPT_RETURN_IF_ERROR(Annotate(ValidateMetadata(spec.metadata), context));
  return Annotate(ValidateTree(spec.tree, max_chunk_bytes), context);
}

absl::Status CheckChunkLengths(const Tree& tree,
                               const absl::flat_hash_map<Digest, uint64_t>& lengths) {
  for (size_t n = 0; n < tree.size(); ++n) {
    const DataRef& data = tree[n].data;
    for (size_t c = 0; c < data.chunks.size(); ++c) {
      auto it = lengths.find(data.chunks[c]);
      const uint64_t stored = it == lengths.end() ? 0 : it->second;
      if (stored != data.ChunkLength(c)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "tensor ", Quote(FlattenedKeys(tree)[n]), ": chunk ", c, " (", data.chunks[c].Hex(),
            ") has ", stored, " bytes, expected ", data.ChunkLength(c)));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ChunkNeverUploaded(const Tree& tree, size_t node, const Digest& digest) {
  return absl::FailedPreconditionError(absl::StrCat("tensor ", Quote(FlattenedKeys(tree)[node]),
                                                    ": chunk ", digest.Hex(),
                                                    " was never uploaded"));
}

VersionInfo NewVersionInfo(CommitSpec& spec, uint64_t version, uint64_t new_bytes) {
  VersionInfo info;
  info.name = spec.name;
  info.version = version;
  info.create_time_ms = absl::ToUnixMillis(absl::Now());
  info.step = spec.step;
  info.epoch = spec.epoch;
  info.metadata = std::move(spec.metadata);
  info.num_nodes = spec.tree.size();
  for (const Node& node : spec.tree) {
    if (!node.has_data()) continue;
    ++info.num_tensors;
    info.data_bytes += node.data.size;
  }
  info.new_bytes = new_bytes;
  info.world_size = spec.world_size;
  info.parent = spec.parent;
  return info;
}

absl::StatusOr<std::vector<uint64_t>> PruneVersions(Store& store, absl::string_view name,
                                                    bool dry_run) {
  CKPT_ASSIGN_OR_RETURN(RetentionPolicy policy, store.GetRetention(name));
  CKPT_ASSIGN_OR_RETURN(std::vector<VersionInfo> versions, store.ListVersions(name));
  std::vector<uint64_t> chosen = VersionsToPrune(versions, policy);
  if (dry_run) return chosen;
  // Each deletion is its own atomic batch. Without force, a version tagged
  // since the listing is refused and so kept; one deleted meanwhile is gone.
  std::vector<uint64_t> deleted;
  for (uint64_t version : chosen) {
    auto released = store.DeleteVersion(name, version, /*force=*/false);
    if (released.ok()) {
      deleted.push_back(version);
    } else if (released.status().code() != absl::StatusCode::kFailedPrecondition &&
               released.status().code() != absl::StatusCode::kNotFound) {
      return Annotate(released.status(),
                      absl::StrCat("applying the retention policy of ", Quote(name)));
    }
  }
  return deleted;
}

}  // namespace ckpt::storage::internal

namespace ckpt::storage {

absl::Status PartWorldSizeMismatch(absl::string_view name, absl::string_view save_id,
                                   uint32_t expected, uint32_t rank, uint32_t world_size) {
  return absl::InvalidArgumentError(absl::StrCat("save '", save_id, "' of '", name,
                                                 "' has world_size ", expected, " but rank ", rank,
                                                 " says ", world_size));
}

absl::Status PartAlreadySent(absl::string_view name, absl::string_view save_id, uint32_t rank) {
  return absl::AlreadyExistsError(absl::StrCat("rank ", rank, " of save '", save_id, "' of '", name,
                                               "' already sent its part"));
}

}  // namespace ckpt::storage
