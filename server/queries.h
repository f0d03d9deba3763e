#ifndef CKPT_SERVER_QUERIES_H_
#define CKPT_SERVER_QUERIES_H_

// Read-only queries that the gRPC handlers and the web page (web_ui.cc)
// answer alike: the checkpoints a principal may read, and the comparison of
// two versions. The caller checks rights on the names it passes.

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/tensor_diff.h"
#include "common/types.h"
#include "server/auth.h"
#include "storage/store.h"

namespace ckpt::server {

/// One page of checkpoint names.
struct CheckpointPage {
  std::vector<CheckpointSummary> checkpoints;
  /// The name to list after for the next page; empty on the last one.
  std::string next_page_token;
};

/// The checkpoints under `prefix` that `principal` may read, in name order,
/// after `start_after`, at most `limit` (> 0). InvalidArgument for an
/// invalid prefix; PermissionDenied if the principal may read no name under
/// it.
absl::StatusOr<CheckpointPage> ListReadableCheckpoints(storage::Store* store,
                                                       const Principal& principal,
                                                       absl::string_view prefix,
                                                       absl::string_view start_after, size_t limit);

/// The two versions a diff compares (name_b may equal name_a).
struct DiffQuery {
  std::string name_a;
  storage::VersionSelector a;
  std::string name_b;
  storage::VersionSelector b;
  /// Most entries kept in VersionDiff::tensors (the rest are counted in
  /// `truncated`); fewer if their keys would not fit one message.
  size_t max_entries = 1000;
};

/// Compares two committed versions key by key: tensors with the same chunk
/// lists count as identical without a read; other tensors of one dtype and
/// shape are streamed chunk by chunk from both (two chunks in memory).
/// NotFound / InvalidArgument of the store for missing or invalid names and
/// versions; DataLoss for corrupt chunks.
absl::StatusOr<VersionDiff> DiffVersions(storage::Store* store, const DiffQuery& query);

}  // namespace ckpt::server

#endif  // CKPT_SERVER_QUERIES_H_
