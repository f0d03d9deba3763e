#include "interop/safetensors.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "interop/pickle.h"

namespace ckpt::interop {
namespace {

using Json = nlohmann::json;

struct DTypeEntry {
  const char* name;
  DType dtype;
};
constexpr DTypeEntry kDTypes[] = {
    {"F64", DType::kFloat64},   {"F32", DType::kFloat32},   {"F16", DType::kFloat16},
    {"BF16", DType::kBFloat16}, {"I64", DType::kInt64},     {"I32", DType::kInt32},
    {"I16", DType::kInt16},     {"I8", DType::kInt8},       {"U8", DType::kUInt8},
    {"BOOL", DType::kBool},     {"U16", DType::kUInt16},    {"U32", DType::kUInt32},
    {"U64", DType::kUInt64},    {"C64", DType::kComplex64},
};

// Deepest nesting of JSON arrays/objects, outside strings. A header never
// needs more than 3; checking first keeps hostile input (100 MB of '[')
// away from the JSON parser.
size_t JsonDepth(absl::string_view s, size_t limit) {
  size_t depth = 0, max_depth = 0;
  bool in_string = false, escape = false;
  for (char c : s) {
    if (in_string) {
      if (escape) {
        escape = false;
      } else if (c == '\\') {
        escape = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
      if (max_depth > limit) return max_depth;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return max_depth;
}

absl::Status EntryError(const std::string& name, absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat("safetensors header: tensor '", name.substr(0, 200), "': ", message));
}

bool NonNegativeInt(const Json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(j.get<int64_t>());
    return true;
  }
  return false;
}

}  // namespace

absl::string_view SafetensorsDTypeName(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "";
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view json, uint64_t data_size,
                                                         uint64_t max_entries) {
  if (json.size() > kMaxSafetensorsHeader) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors header of ", json.size(),
                                                   " bytes (max ", kMaxSafetensorsHeader, ")"));
  }
  if (JsonDepth(json, 8) > 8) {
    return absl::InvalidArgumentError("safetensors header: JSON nested too deeply");
  }
  // Parsed into a std::map-backed object (inserting stays O(log n) for
  // headers with many tensors); the callback records the top-level keys in
  // file order, and catches duplicates, which the map would merge.
  std::vector<std::string> order;
  bool duplicate = false;
  absl::flat_hash_set<std::string> seen_keys;
  Json::parser_callback_t on_event = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::key && depth == 1) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen_keys.insert(key).second) duplicate = true;
      order.push_back(key);
    }
    return true;
  };
  Json root = Json::parse(json.begin(), json.end(), on_event, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError("safetensors header is not valid JSON");
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError("safetensors header is not a JSON object");
  }
  if (duplicate) return absl::InvalidArgumentError("safetensors header: duplicate key");
  SafetensorsHeader header;
  for (const std::string& key : order) {
    auto it = root.find(key);
    if (it == root.end()) return absl::InternalError("safetensors header: key lost");
    const std::string& name = key;
    const Json& v = *it;
    if (name == "__metadata__") {
      if (!v.is_object()) {
        return absl::InvalidArgumentError("safetensors header: __metadata__ is not an object");
      }
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat("safetensors header: __metadata__ value of '", m.key().substr(0, 200),
                           "' is not a string"));
        }
        header.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (header.entries.size() >= max_entries) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors header: more than ", max_entries, " tensors"));
    }
    if (!v.is_object()) return EntryError(name, "not an object");
    SafetensorsEntry e;
    e.name = name;
    auto dtype = v.find("dtype");
    if (dtype == v.end() || !dtype->is_string()) return EntryError(name, "no dtype");
    const std::string dtype_name = dtype->get<std::string>();
    for (const auto& d : kDTypes) {
      if (dtype_name == d.name) e.dtype = d.dtype;
    }
    if (e.dtype == DType::kUnspecified) {
      return EntryError(name, absl::StrCat("unsupported dtype '", dtype_name.substr(0, 32), "'"));
    }
    auto shape = v.find("shape");
    if (shape == v.end() || !shape->is_array()) return EntryError(name, "no shape");
    if (shape->size() > kMaxDims) {
      return EntryError(name, absl::StrCat(shape->size(), " dimensions (max ", kMaxDims, ")"));
    }
    for (const Json& d : *shape) {
      uint64_t dim;
      if (!NonNegativeInt(d, &dim) || dim > (uint64_t{1} << 62)) {
        return EntryError(name, "shape must hold non-negative integers");
      }
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    auto offsets = v.find("data_offsets");
    if (offsets == v.end() || !offsets->is_array() || offsets->size() != 2 ||
        !NonNegativeInt((*offsets)[0], &e.begin) || !NonNegativeInt((*offsets)[1], &e.end)) {
      return EntryError(name, "data_offsets must be [begin, end]");
    }
    if (e.begin > e.end || e.end > data_size) {
      return EntryError(name,
                        absl::StrCat("data_offsets [", e.begin, ", ", e.end,
                                     "] out of range (data section of ", data_size, " bytes)"));
    }
    TensorMeta meta;
    meta.dtype = e.dtype;
    meta.shape = e.shape;
    auto bytes = meta.NumBytes();
    if (!bytes.ok()) return EntryError(name, bytes.status().message());
    if (*bytes != e.end - e.begin) {
      return EntryError(name, absl::StrCat("shape and dtype make ", *bytes, " bytes but ",
                                           "data_offsets span ", e.end - e.begin));
    }
    header.entries.push_back(std::move(e));
  }
  std::vector<const SafetensorsEntry*> sorted;
  for (const auto& e : header.entries) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->begin < sorted[i - 1]->end) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors header: tensors '",
                                                     sorted[i - 1]->name.substr(0, 200), "' and '",
                                                     sorted[i]->name.substr(0, 200), "' overlap"));
    }
  }
  return header;
}

absl::StatusOr<ImportedCheckpoint> ReadSafetensors(absl::Span<const uint8_t> file,
                                                   const ReadOptions& options) {
  if (file.size() < 8) return absl::InvalidArgumentError("safetensors file shorter than 8 bytes");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{file[i]} << (8 * i);
  if (n > kMaxSafetensorsHeader) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors header of ", n, " bytes (max ", kMaxSafetensorsHeader, ")"));
  }
  if (n > file.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors header of ", n,
                                                   " bytes but the file has only ", file.size() - 8,
                                                   " after the length"));
  }
  const absl::string_view json(reinterpret_cast<const char*>(file.data()) + 8, n);
  const absl::Span<const uint8_t> data = file.subspan(8 + n);
  CKPT_ASSIGN_OR_RETURN(SafetensorsHeader header,
                        ParseSafetensorsHeader(json, data.size(), options.max_nodes - 1));
  ImportedCheckpoint out;
  out.format = Format::kSafetensors;
  out.metadata = std::move(header.metadata);
  Node root;
  root.kind = NodeKind::kDict;
  root.size = static_cast<uint32_t>(header.entries.size());
  out.tree.push_back(root);
  out.bytes.emplace_back();
  for (const SafetensorsEntry& e : header.entries) {
    Node node;
    node.kind = NodeKind::kTensor;
    node.key = e.name;
    node.tensor.dtype = e.dtype;
    node.tensor.shape = e.shape;
    node.data.size = e.end - e.begin;
    out.tree.push_back(std::move(node));
    out.bytes.push_back(data.subspan(e.begin, e.end - e.begin));
  }
  return out;
}

// ------------------------------------------------------------------ writer

namespace {

class SafetensorsWriter : public CheckpointWriter {
 public:
  SafetensorsWriter(const Tree& tree, OutputFile* out) : tree_(tree), out_(out) {}

  absl::Status Plan(const WriteOptions& options) {
    if (tree_.empty() || !tree_[0].is_container()) {
      return absl::InvalidArgumentError(
          "safetensors holds named tensors: the checkpoint's root must be a dict");
    }
    const std::vector<std::string> keys = FlattenedKeys(tree_);
    for (const auto& [k, v] : options.metadata) {
      if (!IsValidUtf8(k) || !IsValidUtf8(v)) {
        return absl::InvalidArgumentError("metadata is not UTF-8");
      }
    }
    // Built as text: keys in tree order, without a map's lookups.
    Json metadata = Json::object();
    for (const auto& [k, v] : options.metadata) metadata[k] = v;
    if (metadata.empty()) metadata["format"] = "pt";
    std::string text = absl::StrCat("{\"__metadata__\":", metadata.dump());
    offset_.assign(tree_.size(), 0);
    received_.assign(tree_.size(), 0);
    absl::flat_hash_set<std::string> seen;
    uint64_t offset = 0;
    for (size_t i = 1; i < tree_.size(); ++i) {
      const Node& n = tree_[i];
      if (n.is_container()) {
        if (n.size > 0) continue;
        return absl::InvalidArgumentError(absl::StrCat("safetensors holds only tensors: '", keys[i],
                                                       "' is an empty ", NodeKindName(n.kind)));
      }
      if (n.kind != NodeKind::kTensor) {
        return absl::InvalidArgumentError(
            absl::StrCat("safetensors holds only tensors: '", keys[i], "' is a ",
                         NodeKindName(n.kind), " (select tensors with --keys, or export to .pt)"));
      }
      const absl::string_view dtype = SafetensorsDTypeName(n.tensor.dtype);
      if (dtype.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", keys[i], "': safetensors has no ", DTypeName(n.tensor.dtype), " dtype"));
      }
      if (keys[i] == "__metadata__" || !seen.insert(keys[i]).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor key '", keys[i], "' appears twice (or is reserved) once flattened"));
      }
      if (!IsValidUtf8(keys[i])) {
        return absl::InvalidArgumentError(absl::StrCat("tensor key '", keys[i], "' is not UTF-8"));
      }
      absl::StrAppend(&text, ",", Json(keys[i]).dump(), ":{\"dtype\":\"", dtype,
                      "\",\"shape\":", Json(n.tensor.shape).dump(), ",\"data_offsets\":[", offset,
                      ",", offset + n.data.size, "]}");
      offset_[i] = offset;
      offset += n.data.size;
    }
    text += "}";
    text.append((8 - text.size() % 8) % 8, ' ');
    std::string prefix;
    for (int i = 0; i < 8; ++i)
      prefix.push_back(static_cast<char>((text.size() >> (8 * i)) & 0xff));
    data_start_ = 8 + text.size();
    CKPT_RETURN_IF_ERROR(out_->WriteAt(0, prefix + text));
    return absl::OkStatus();
  }

  absl::Status Write(size_t node, uint64_t offset, absl::string_view bytes) override {
    if (node >= tree_.size() || tree_[node].kind != NodeKind::kTensor) {
      return absl::InvalidArgumentError(absl::StrCat("data for node ", node, " without data"));
    }
    if (node < last_node_ || offset != received_[node] ||
        bytes.size() > tree_[node].data.size - offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("out-of-order data for node ", node, " at offset ", offset));
    }
    last_node_ = node;
    received_[node] += bytes.size();
    return out_->WriteAt(data_start_ + offset_[node] + offset, bytes);
  }

  absl::Status Finish() override {
    for (size_t i = 0; i < tree_.size(); ++i) {
      if (tree_[i].has_data() && received_[i] != tree_[i].data.size) {
        return absl::FailedPreconditionError(absl::StrCat("export incomplete: node ", i));
      }
    }
    return absl::OkStatus();
  }

 private:
  const Tree& tree_;
  OutputFile* out_;
  std::vector<uint64_t> offset_;
  std::vector<uint64_t> received_;
  uint64_t data_start_ = 0;
  size_t last_node_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointWriter>> NewSafetensorsWriter(
    const Tree& tree, OutputFile* out, const WriteOptions& options) {
  auto w = std::make_unique<SafetensorsWriter>(tree, out);
  CKPT_RETURN_IF_ERROR(w->Plan(options));
  return std::unique_ptr<CheckpointWriter>(std::move(w));
}

}  // namespace ckpt::interop
