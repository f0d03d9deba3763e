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
#include "common/types.h"

namespace ckpt::cli {

/// JSON objects keep their keys in insertion order so output is stable.
using Json = nlohmann::ordered_json;

/// ISO-8601 UTC time with second precision: "2024-05-01T12:34:56Z".
std::string FormatTime(int64_t unix_ms);

/// Binary-prefixed size: "0 B", "24 B", "1.0 KiB", "1.5 GiB" (one decimal
/// from KiB up).
std::string HumanBytes(uint64_t bytes);

/// "1.5 GiB (1610612736 bytes)"; just "24 bytes" below 1 KiB.
std::string HumanAndExactBytes(uint64_t bytes);

/// Shortest decimal that reads back as the same double (std::to_chars), with
/// ".0" added to integral values so floats stay recognisable ("1.0", "0.25",
/// "1e-05", "inf", "-inf", "nan").
std::string FormatFloat(double value);

/// `s` as is when it holds no control characters, else C-escaped
/// (absl::CEscape), so one value always prints on one line.
std::string Printable(absl::string_view s);

/// `s` in double quotes with C escapes ("a\"b", "tab\there").
std::string Quoted(absl::string_view s);

/// Text of a scalar or leaf node without its key: `5`, `0.25`, `True`,
/// `None`, `"text"`, `float32 [2, 3]  24 B  cpu`, `bytes 1.2 MiB`,
/// `dict (3)`.
std::string DescribeNode(const Node& node);

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
