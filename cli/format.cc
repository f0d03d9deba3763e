#include "cli/format.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"

namespace ckpt::cli {
namespace {

// A dict key as typed in the tree listing: quoted when it could be mistaken
// for an integer key, a list index, or would break the "KEY  DESCRIPTION"
// layout.
std::string DictKeyText(const NodeKey& key) {
  if (const auto* i = std::get_if<int64_t>(&key)) return absl::StrCat(*i);
  const auto* s = std::get_if<std::string>(&key);
  if (s == nullptr) return "?";
  int64_t unused;
  const bool ambiguous =
      s->empty() || absl::SimpleAtoi(*s, &unused) || s->front() == '"' || s->front() == '[' ||
      std::any_of(s->begin(), s->end(), [](char c) { return c == ' ' || IsControlChar(c); });
  return ambiguous ? Quoted(*s) : *s;
}

Json KeyToJson(const NodeKey& key) {
  if (const auto* s = std::get_if<std::string>(&key)) return *s;
  if (const auto* i = std::get_if<int64_t>(&key)) return *i;
  return nullptr;
}

absl::StatusOr<Json> NodeToJson(const Tree& tree, size_t* next, size_t depth) {
  if (*next >= tree.size()) {
    return absl::DataLossError(
        absl::StrCat("manifest ends inside a container (", tree.size(), " nodes)"));
  }
  const size_t index = (*next)++;
  const Node& node = tree[index];
  Json out = Json::object();
  out["type"] = ValueTypeName(node.kind);
  switch (node.kind) {
    case NodeKind::kDict:
    case NodeKind::kList:
    case NodeKind::kTuple: {
      if (depth >= kMaxDepth) {
        return absl::DataLossError(
            absl::StrCat("manifest nests deeper than ", kMaxDepth, " at node ", index));
      }
      Json items = Json::array();
      for (uint32_t c = 0; c < node.size; ++c) {
        if (node.kind == NodeKind::kDict) {
          if (*next >= tree.size()) break;  // reported by the recursive call below
          Json item = Json::object();
          item["key"] = KeyToJson(tree[*next].key);
          auto value = NodeToJson(tree, next, depth + 1);
          if (!value.ok()) return value.status();
          item["value"] = *std::move(value);
          items.push_back(std::move(item));
        } else {
          auto value = NodeToJson(tree, next, depth + 1);
          if (!value.ok()) return value.status();
          items.push_back(*std::move(value));
        }
      }
      if (items.size() != node.size) {
        return absl::DataLossError(
            absl::StrCat("manifest ends inside a container (", tree.size(), " nodes)"));
      }
      out["items"] = std::move(items);
      break;
    }
    case NodeKind::kNone:
      break;
    case NodeKind::kBool:
      out["value"] = node.bool_value;
      break;
    case NodeKind::kInt:
      out["value"] = node.int_value;
      break;
    case NodeKind::kFloat:
      out["value"] = FloatToJson(node.float_value);
      break;
    case NodeKind::kString:
      out["value"] = node.string_value;
      break;
    case NodeKind::kTensor:
      out["dtype"] = std::string(DTypeName(node.tensor.dtype));
      out["shape"] = node.tensor.shape;
      out["device"] = node.tensor.device;
      out["requires_grad"] = node.tensor.requires_grad;
      out["bytes"] = node.data.size;
      out["chunks"] = node.data.chunks.size();
      if (node.tensor.stats) out["stats"] = StatsToJson(*node.tensor.stats);
      break;
    case NodeKind::kBytes:
      out["bytes"] = node.data.size;
      out["chunks"] = node.data.chunks.size();
      break;
  }
  return out;
}

}  // namespace

void PrintTable(std::ostream& out, const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows) {
  if (rows.empty()) return;
  std::vector<size_t> widths(header.size(), 0);
  auto widen = [&widths](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  };
  widen(header);
  for (const auto& row : rows) widen(row);
  auto print = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size() + 2, ' ');
    }
    // An empty last cell would leave the padding of the one before it.
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << '\n';
  };
  print(header);
  for (const auto& row : rows) print(row);
}

void PrintFields(std::ostream& out,
                 const std::vector<std::pair<std::string, std::string>>& fields) {
  size_t width = 0;
  for (const auto& [label, value] : fields) width = std::max(width, label.size() + 1);
  width += 2;
  for (const auto& [label, value] : fields) {
    std::string head = absl::StrCat(label, ":");
    head.resize(width, ' ');
    bool first = true;
    for (absl::string_view line : absl::StrSplit(value, '\n')) {
      out << (first ? head : std::string(width, ' ')) << line << '\n';
      first = false;
    }
  }
}

Json FloatToJson(double v) {
  // JSON has no NaN or infinity; nlohmann would print null, losing the value.
  if (std::isfinite(v)) return v;
  return FormatFloat(v);
}

Json StatsToJson(const TensorStats& stats) {
  Json out = Json::object();
  out["count"] = stats.count;
  out["min"] = FloatToJson(stats.min);
  out["max"] = FloatToJson(stats.max);
  out["mean"] = FloatToJson(stats.mean);
  out["std"] = FloatToJson(stats.std);
  out["l2"] = FloatToJson(stats.l2);
  out["nan"] = stats.nan;
  out["pos_inf"] = stats.pos_inf;
  out["neg_inf"] = stats.neg_inf;
  return out;
}

void PrintStatsTable(std::ostream& out, const Tree& tree) {
  const std::vector<std::string> keys = FlattenedKeys(tree);
  std::vector<std::vector<std::string>> rows;
  auto number = [](double v) { return absl::StrFormat("%.6g", v); };
  for (size_t i = 0; i < tree.size(); ++i) {
    const Node& node = tree[i];
    if (node.kind != NodeKind::kTensor) continue;
    std::vector<std::string> row = {Printable(keys[i]), std::string(DTypeName(node.tensor.dtype)),
                                    ShapeText(node.tensor.shape)};
    if (!node.tensor.stats) {
      row.insert(row.end(), {"-", "-", "-", "-", "-", "-", "-", "-", ""});
    } else {
      const TensorStats& st = *node.tensor.stats;
      row.insert(row.end(), {number(st.min), number(st.max), number(st.mean), number(st.std),
                             number(st.l2), absl::StrCat(st.nan), absl::StrCat(st.pos_inf),
                             absl::StrCat(st.neg_inf), st.nonfinite() > 0 ? "NON-FINITE" : ""});
    }
    rows.push_back(std::move(row));
  }
  PrintTable(
      out, {"KEY", "DTYPE", "SHAPE", "MIN", "MAX", "MEAN", "STD", "L2", "NAN", "+INF", "-INF", ""},
      rows);
}

void PrintTree(std::ostream& out, const Tree& tree) {
  // One frame per open container: its kind, its size and children left.
  struct Frame {
    NodeKind kind;
    uint32_t size;
    uint32_t left;
  };
  std::vector<Frame> open;
  for (const Node& node : tree) {
    std::string line(2 * open.size(), ' ');
    if (!open.empty()) {
      Frame& parent = open.back();
      if (parent.kind == NodeKind::kDict) {
        line += DictKeyText(node.key);
      } else {
        absl::StrAppend(&line, "[", parent.size - parent.left, "]");
      }
      line += "  ";
      --parent.left;
    }
    line += DescribeNode(node);
    out << line << '\n';
    if (node.is_container() && node.size > 0) open.push_back({node.kind, node.size, node.size});
    while (!open.empty() && open.back().left == 0) open.pop_back();
  }
}

void PrintVersionHeader(std::ostream& out, const VersionInfo& v) {
  std::vector<std::string> metadata;
  for (const auto& [key, value] : v.metadata) {
    metadata.push_back(absl::StrCat(Printable(key), "=", Printable(value)));
  }
  PrintFields(out, {
                       {"name", v.name},
                       {"version", absl::StrCat(v.version)},
                       {"created", FormatTime(v.create_time_ms)},
                       {"step", absl::StrCat(v.step)},
                       {"epoch", absl::StrCat(v.epoch)},
                       {"tags", v.tags.empty() ? "-" : absl::StrJoin(v.tags, ", ")},
                       {"metadata", metadata.empty() ? "-" : absl::StrJoin(metadata, "\n")},
                       {"tensors", absl::StrCat(v.num_tensors)},
                       {"nodes", absl::StrCat(v.num_nodes)},
                       {"data size", HumanAndExactBytes(v.data_bytes)},
                       {"new bytes", HumanAndExactBytes(v.new_bytes)},
                       {"parts", absl::StrCat(v.world_size)},
                       {"parent", v.parent.empty() ? "-" : v.parent},
                   });
}

Json VersionToJson(const VersionInfo& v) {
  Json metadata = Json::object();
  for (const auto& [key, value] : v.metadata) metadata[key] = value;
  Json out = Json::object();
  out["name"] = v.name;
  out["version"] = v.version;
  out["created"] = FormatTime(v.create_time_ms);
  out["create_time_ms"] = v.create_time_ms;
  out["step"] = v.step;
  out["epoch"] = v.epoch;
  out["metadata"] = std::move(metadata);
  out["tags"] = v.tags;
  out["num_tensors"] = v.num_tensors;
  out["parent"] = v.parent;
  out["num_nodes"] = v.num_nodes;
  out["data_bytes"] = v.data_bytes;
  out["new_bytes"] = v.new_bytes;
  out["world_size"] = v.world_size;
  return out;
}

Json SummaryToJson(const CheckpointSummary& s) {
  Json out = Json::object();
  out["name"] = s.name;
  out["latest_version"] = s.latest_version;
  out["num_versions"] = s.num_versions;
  out["latest_created"] = FormatTime(s.latest_create_time_ms);
  out["latest_create_time_ms"] = s.latest_create_time_ms;
  return out;
}

Json ServerInfoToJson(const client::ServerInfo& info) {
  Json out = Json::object();
  out["server_version"] = info.server_version;
  out["chunk_size"] = info.chunk_size;
  out["max_message_bytes"] = info.max_message_bytes;
  out["checkpoints"] = info.stats.checkpoints;
  out["versions"] = info.stats.versions;
  out["chunks"] = info.stats.chunks;
  out["stored_bytes"] = info.stats.stored_bytes;
  out["logical_bytes"] = info.stats.logical_bytes;
  out["dedup_ratio"] = FloatToJson(info.dedup_ratio);
  out["disk_bytes"] = info.stats.disk_bytes;
  out["active_uploads"] = info.stats.active_uploads;
  out["garbage_bytes"] = info.stats.garbage_bytes;
  return out;
}

Json GcResultToJson(const GcResult& gc) {
  Json out = Json::object();
  out["chunks_removed"] = gc.chunks_removed;
  out["bytes_removed"] = gc.bytes_removed;
  out["orphan_uploads_removed"] = gc.orphan_uploads_removed;
  return out;
}

Json BackupInfoToJson(const BackupInfo& backup) {
  Json out = Json::object();
  out["name"] = backup.name;
  out["path"] = backup.path;
  out["versions"] = backup.versions;
  out["files"] = backup.files;
  out["bytes"] = backup.bytes;
  return out;
}

absl::StatusOr<Json> TreeToJson(const Tree& tree) {
  if (tree.empty()) return absl::DataLossError("manifest has no root node");
  size_t next = 0;
  auto root = NodeToJson(tree, &next, 0);
  if (!root.ok()) return root.status();
  if (next != tree.size()) {
    return absl::DataLossError(
        absl::StrCat("manifest has ", tree.size() - next, " nodes after the end of its root"));
  }
  return root;
}

void PrintJson(std::ostream& out, const Json& json) {
  out << json.dump(2, ' ', false, Json::error_handler_t::replace) << '\n';
}

}  // namespace ckpt::cli
