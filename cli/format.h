#ifndef CKPT_CLI_FORMAT_H_
#define CKPT_CLI_FORMAT_H_

// Text and JSON renderings of the ckpt value types, as printed by the `ckpt`
// command. Pure functions (no I/O besides the given stream, no RPCs), so the
// formats can be tested without a server. The formats are part of the CLI's
// interface and are described at the top of cli/main.cc: change both together.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/raw_client.h"
#include "common/text.h"
#include "common/types.h"

namespace ckpt::cli {

/// JSON objects keep their keys in insertion order so output is stable.
using Json = nlohmann::ordered_json;

// The renderings shared with the server's web page (common/text.h).
using ::ckpt::DescribeNode;
using ::ckpt::FormatFloat;
using ::ckpt::FormatTime;
using ::ckpt::HumanAndExactBytes;
using ::ckpt::HumanBytes;
using ::ckpt::Printable;
using ::ckpt::Quoted;

/// A table printed with columns left-aligned and separated by two spaces;
/// no trailing whitespace. Prints nothing when `rows` is empty.
void PrintTable(std::ostream& out, const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows);

/// "label:  value" lines with values aligned. A value with newlines
/// continues on following lines at the same column.
void PrintFields(std::ostream& out, const std::vector<std::pair<std::string, std::string>>& fields);

/// One line per node, indented two spaces per depth: `KEY  DESCRIPTION`.
/// Dict keys print as is (integer keys as numbers; string keys that are
/// empty, look like integers or hold spaces or control characters are
/// quoted); list and tuple elements as `[i]`; the root has no key.
void PrintTree(std::ostream& out, const Tree& tree);

/// A double as JSON: a number when finite, else "nan", "inf" or "-inf"
/// (JSON has none of them).
Json FloatToJson(double v);

/// A tensor's statistics as JSON: count, min, max, mean, std, l2, nan,
/// pos_inf, neg_inf (non-finite floats as FloatToJson writes them).
Json StatsToJson(const TensorStats& stats);

/// `ckpt show --stats`: one row per tensor (flattened key, dtype, shape,
/// min, max, mean, std, L2, NaN, +Inf, -Inf), "NON-FINITE" at the end of a
/// row whose tensor holds NaN or infinities; "-" where a version has no
/// statistics (saved by an older client).
void PrintStatsTable(std::ostream& out, const Tree& tree);

/// Version header of `ckpt show` (name, version, created, step, epoch,
/// tags, metadata, totals).
void PrintVersionHeader(std::ostream& out, const VersionInfo& version);

/// {"name", "version", "created", "create_time_ms", "step", "epoch",
///  "metadata": {...}, "tags": [...], "num_tensors", "num_nodes",
///  "data_bytes", "new_bytes", "world_size"}.
Json VersionToJson(const VersionInfo& version);

/// {"name", "latest_version", "num_versions", "latest_created",
///  "latest_create_time_ms"}.
Json SummaryToJson(const CheckpointSummary& summary);

/// {"server_version", "chunk_size", "max_message_bytes", "checkpoints",
///  "versions", "chunks", "stored_bytes", "logical_bytes", "dedup_ratio",
///  "disk_bytes", "active_uploads"}.
Json ServerInfoToJson(const client::ServerInfo& info);

/// {"chunks_removed", "bytes_removed", "orphan_uploads_removed"}.
Json GcResultToJson(const GcResult& gc);
Json BackupInfoToJson(const BackupInfo& backup);

/// The value tree as nested JSON (see cli/main.cc). DataLoss if `tree` is
/// not one well-formed pre-order tree (a container claims missing children,
/// nodes are left over, or nesting exceeds kMaxDepth).
absl::StatusOr<Json> TreeToJson(const Tree& tree);

/// `json` pretty-printed with two-space indentation and a final newline.
/// Invalid UTF-8 in strings is replaced (U+FFFD) rather than failing.
void PrintJson(std::ostream& out, const Json& json);

}  // namespace ckpt::cli

#endif  // CKPT_CLI_FORMAT_H_
