#include "common/types.h"

#include <xxhash.h>
// Debian's libxxhash picks XXH3's widest vector code (AVX2, AVX-512) for the
// CPU at run time in its *_dispatch entry points; the plain ones are SSE2
// (~1.4x slower here, and every byte saved or loaded is hashed once). CMake
// defines CKPT_HAVE_XXH3_DISPATCH where the library links them.
#ifdef CKPT_HAVE_XXH3_DISPATCH
#include <xxh_x86dispatch.h>
#define CKPT_XXH3_128 XXH3_128bits_dispatch
#endif
#ifndef CKPT_XXH3_128
#define CKPT_XXH3_128 XXH3_128bits
#endif

#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/names.h"
#include "common/tensor_stats.h"

namespace ckpt {
namespace {

struct DTypeInfo {
  DType dtype;
  absl::string_view name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::kFloat32, "float32", 4},     {DType::kFloat64, "float64", 8},
    {DType::kFloat16, "float16", 2},     {DType::kBFloat16, "bfloat16", 2},
    {DType::kInt8, "int8", 1},           {DType::kInt16, "int16", 2},
    {DType::kInt32, "int32", 4},         {DType::kInt64, "int64", 8},
    {DType::kUInt8, "uint8", 1},         {DType::kBool, "bool", 1},
    {DType::kComplex64, "complex64", 8}, {DType::kComplex128, "complex128", 16},
    {DType::kUInt16, "uint16", 2},       {DType::kUInt32, "uint32", 4},
    {DType::kUInt64, "uint64", 8},
};

const DTypeInfo* Find(DType dtype) {
  for (const auto& info : kDTypes) {
    if (info.dtype == dtype) return &info;
  }
  return nullptr;
}

std::string KeyText(const NodeKey& key, size_t index_in_parent) {
  if (auto* s = std::get_if<std::string>(&key)) return *s;
  if (auto* i = std::get_if<int64_t>(&key)) return absl::StrCat(*i);
  return absl::StrCat(index_in_parent);
}

std::string Join(const std::string& parent, const std::string& child) {
  return parent.empty() ? child : absl::StrCat(parent, "/", child);
}

// Keys in messages are cut (a hostile key may be megabytes long).
std::string Quoted(absl::string_view key) { return absl::StrCat("'", Excerpt(key, 256), "'"); }

}  // namespace

std::string ShapeText(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

size_t DTypeSize(DType dtype) {
  const DTypeInfo* info = Find(dtype);
  return info ? info->size : 0;
}

absl::string_view DTypeName(DType dtype) {
  const DTypeInfo* info = Find(dtype);
  return info ? info->name : "unspecified";
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  std::string n = absl::AsciiStrToLower(name);
  if (absl::StartsWith(n, "torch.")) n = n.substr(6);
  static const std::pair<absl::string_view, DType> kAliases[] = {
      {"float", DType::kFloat32},    {"double", DType::kFloat64},     {"half", DType::kFloat16},
      {"short", DType::kInt16},      {"int", DType::kInt32},          {"long", DType::kInt64},
      {"cfloat", DType::kComplex64}, {"cdouble", DType::kComplex128},
  };
  for (const auto& info : kDTypes) {
    if (info.name == n) return info.dtype;
  }
  for (const auto& [alias, dtype] : kAliases) {
    if (alias == n) return dtype;
  }
  return absl::NotFoundError(absl::StrCat("unknown dtype '", name, "'"));
}

Digest Digest::Of(absl::Span<const uint8_t> data) {
  XXH128_hash_t h = CKPT_XXH3_128(data.data(), data.size());
  Digest d;
  for (int i = 0; i < 8; ++i) {
    d.bytes[i] = static_cast<uint8_t>(h.high64 >> (56 - 8 * i));
    d.bytes[8 + i] = static_cast<uint8_t>(h.low64 >> (56 - 8 * i));
  }
  return d;
}

Digest Digest::Of(absl::string_view data) {
  return Of(absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
}

absl::StatusOr<Digest> Digest::FromBytes(absl::string_view raw) {
  if (raw.size() != 16) {
    return absl::InvalidArgumentError(absl::StrCat("digest must be 16 bytes, got ", raw.size()));
  }
  Digest d;
  std::copy(raw.begin(), raw.end(), d.bytes.begin());
  return d;
}

std::string Digest::Hex() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (size_t i = 0; i < 16; ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return out;
}

uint64_t DataRef::NumChunks(uint64_t size, uint32_t chunk_size) {
  if (size == 0 || chunk_size == 0) return 0;
  return size / chunk_size + (size % chunk_size != 0);
}

uint64_t DataRef::ChunkLength(size_t i) const {
  uint64_t start = static_cast<uint64_t>(i) * chunk_size;
  if (start >= size) return 0;
  return std::min<uint64_t>(chunk_size, size - start);
}

absl::StatusOr<uint64_t> TensorMeta::NumElements() const {
  constexpr uint64_t kLimit = uint64_t{1} << 62;
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("negative dimension ", d, " in shape ", ShapeText(shape)));
    }
    if (d != 0 && n > kLimit / static_cast<uint64_t>(d)) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", ShapeText(shape), " overflows the element count"));
    }
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

absl::StatusOr<uint64_t> TensorMeta::NumBytes() const {
  size_t item = DTypeSize(dtype);
  if (item == 0) {
    return absl::InvalidArgumentError(absl::StrCat("invalid dtype ", static_cast<int>(dtype)));
  }
  auto n = NumElements();
  if (!n.ok()) return n.status();
  if (*n > (uint64_t{1} << 62) / item) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", ShapeText(shape), " overflows the byte count"));
  }
  return *n * item;
}

absl::string_view NodeKindName(NodeKind kind) {
  switch (kind) {
    case NodeKind::kDict:
      return "dict";
    case NodeKind::kList:
      return "list";
    case NodeKind::kTuple:
      return "tuple";
    case NodeKind::kNone:
      return "None";
    case NodeKind::kBool:
      return "bool";
    case NodeKind::kInt:
      return "int";
    case NodeKind::kFloat:
      return "float";
    case NodeKind::kString:
      return "str";
    case NodeKind::kTensor:
      return "tensor";
    case NodeKind::kBytes:
      return "bytes";
  }
  return "unknown";
}

namespace {

// One open container while walking a pre-order tree.
struct Frame {
  const Node* node;
  std::string key;
  uint32_t remaining;
  uint32_t next_index = 0;
  absl::flat_hash_set<std::string> str_keys;
  absl::flat_hash_set<int64_t> int_keys;
};

}  // namespace

absl::Status ValidateNodeData(const Node& node, absl::string_view key_view,
                              uint32_t max_chunk_bytes) {
  if (!node.has_data()) return absl::OkStatus();
  const std::string key(key_view);
  const DataRef& data = node.data;
  if (node.kind == NodeKind::kTensor) {
    if (node.tensor.shape.size() > kMaxDims) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(key), ": ",
                                                     node.tensor.shape.size(), " dimensions (max ",
                                                     kMaxDims, ")"));
    }
    auto nbytes = node.tensor.NumBytes();
    if (!nbytes.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quoted(key), ": ", nbytes.status().message()));
    }
    if (*nbytes != data.size) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Quoted(key), ": dtype ",
                                                     DTypeName(node.tensor.dtype), " x shape ",
                                                     ShapeText(node.tensor.shape), " is ", *nbytes,
                                                     " bytes but the data declares ", data.size));
    }
    if (node.tensor.device.empty() || node.tensor.device.size() > 64) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quoted(key), ": invalid device string"));
    }
    absl::Status stats = ValidateStats(node.tensor, *node.tensor.NumElements());
    if (!stats.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quoted(key), ": ", stats.message()));
    }
  }
  if (data.size > 0 && (data.chunk_size == 0 || data.chunk_size > max_chunk_bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(Quoted(key), ": chunk_size ", data.chunk_size,
                                                   " not in [1, ", max_chunk_bytes, "]"));
  }
  uint64_t want = DataRef::NumChunks(data.size, data.chunk_size);
  if (data.chunks.size() != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(Quoted(key), ": ", data.size, " bytes in chunks of ", data.chunk_size,
                     " need ", want, " chunk digests, got ", data.chunks.size()));
  }
  return absl::OkStatus();
}

absl::Status ValidateTree(const Tree& tree, uint32_t max_chunk_bytes) {
  if (tree.empty()) return absl::InvalidArgumentError("empty tree: no root node");
  std::vector<Frame> stack;
  uint64_t total_key_bytes = 0;
  for (size_t i = 0; i < tree.size(); ++i) {
    const Node& node = tree[i];
    std::string key;
    if (!stack.empty()) {
      // Sizes first, so that no long key is ever built: each key is its
      // parent's plus one segment, and the total bounds all of them.
      const Frame& parent = stack.back();
      const std::string text = KeyText(node.key, parent.next_index);
      if (text.size() > kMaxKeyLength) {
        return absl::InvalidArgumentError(absl::StrCat("key ", Quoted(text), " under ",
                                                       Quoted(parent.key), " is ", text.size(),
                                                       " bytes (max ", kMaxKeyLength, ")"));
      }
      const size_t length = parent.key.size() + (parent.key.empty() ? 0 : 1) + text.size();
      if (length > kMaxKeyLength) {
        return absl::InvalidArgumentError(
            absl::StrCat("key ", Quoted(text), " under ", Quoted(parent.key),
                         ": the flattened key is ", length, " bytes (max ", kMaxKeyLength, ")"));
      }
      total_key_bytes += length;
      if (total_key_bytes > kMaxTotalKeyBytes) {
        return absl::InvalidArgumentError(absl::StrCat("the tree's flattened keys exceed ",
                                                       kMaxTotalKeyBytes, " bytes in all (at node ",
                                                       i, ")"));
      }
    }
    if (stack.empty()) {
      if (i != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("node ", i, " lies outside the root's subtree"));
      }
      if (!std::holds_alternative<std::monostate>(node.key)) {
        return absl::InvalidArgumentError("the root node must not have a key");
      }
    } else {
      Frame& parent = stack.back();
      const bool in_dict = parent.node->kind == NodeKind::kDict;
      key = Join(parent.key, KeyText(node.key, parent.next_index));
      if (in_dict) {
        if (auto* s = std::get_if<std::string>(&node.key)) {
          if (!parent.str_keys.insert(*s).second) {
            return absl::InvalidArgumentError(absl::StrCat("duplicate dict key ", Quoted(key)));
          }
        } else if (auto* k = std::get_if<int64_t>(&node.key)) {
          if (!parent.int_keys.insert(*k).second) {
            return absl::InvalidArgumentError(absl::StrCat("duplicate dict key ", Quoted(key)));
          }
        } else {
          return absl::InvalidArgumentError(absl::StrCat("element ", parent.next_index, " of dict ",
                                                         Quoted(parent.key), " has no key"));
        }
      } else if (!std::holds_alternative<std::monostate>(node.key)) {
        return absl::InvalidArgumentError(absl::StrCat("element ", Quoted(key), " of a ",
                                                       NodeKindName(parent.node->kind),
                                                       " must not have a key"));
      }
      ++parent.next_index;
      --parent.remaining;
    }
    if (node.kind == NodeKind::kString && node.string_value.size() > kMaxInlineString) {
      return absl::InvalidArgumentError(absl::StrCat("string ", Quoted(key), " is ",
                                                     node.string_value.size(), " bytes (max ",
                                                     kMaxInlineString, "; store it as bytes)"));
    }
    if (node.has_data()) {
      absl::Status status = ValidateNodeData(node, key, max_chunk_bytes);
      if (!status.ok()) return status;
    }
    if (node.is_container() && node.size > 0) {
      if (node.size > tree.size() - i - 1) {
        return absl::InvalidArgumentError(
            absl::StrCat(NodeKindName(node.kind), " ", Quoted(key), " declares ", node.size,
                         " children but only ", tree.size() - i - 1, " nodes follow"));
      }
      if (stack.size() >= kMaxDepth) {
        return absl::InvalidArgumentError(absl::StrCat(NodeKindName(node.kind), " ", Quoted(key),
                                                       " is nested deeper than ", kMaxDepth));
      }
      stack.push_back(Frame{&node, key, node.size});
    } else {
      while (!stack.empty() && stack.back().remaining == 0) stack.pop_back();
    }
  }
  if (!stack.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(NodeKindName(stack.back().node->kind), " ",
                                                   Quoted(stack.back().key), " is missing ",
                                                   stack.back().remaining, " children"));
  }
  return absl::OkStatus();
}

absl::Status ValidateMetadata(const std::map<std::string, std::string>& metadata) {
  if (metadata.size() > kMaxMetadataEntries) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata has ", metadata.size(), " entries (max ", kMaxMetadataEntries, ")"));
  }
  size_t total = 0;
  for (const auto& [key, value] : metadata) {
    if (key.size() > kMaxMetadataKey || value.size() > kMaxMetadataValue) {
      return absl::InvalidArgumentError(absl::StrCat(
          "metadata ", Quoted(key), ": key of ", key.size(), " bytes (max ", kMaxMetadataKey,
          "), value of ", value.size(), " bytes (max ", kMaxMetadataValue, ")"));
    }
    total += key.size() + value.size();
  }
  if (total > kMaxMetadataBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("metadata of ", total, " bytes in all (max ", kMaxMetadataBytes, ")"));
  }
  return absl::OkStatus();
}

std::vector<std::string> FlattenedKeys(const Tree& tree) {
  std::vector<std::string> keys(tree.size());
  struct Open {
    size_t node;
    uint32_t remaining;
    uint32_t next_index;
  };
  std::vector<Open> stack;
  for (size_t i = 0; i < tree.size(); ++i) {
    if (!stack.empty()) {
      Open& parent = stack.back();
      keys[i] = Join(keys[parent.node], KeyText(tree[i].key, parent.next_index));
      ++parent.next_index;
      --parent.remaining;
    }
    if (tree[i].is_container() && tree[i].size > 0) {
      stack.push_back(Open{i, tree[i].size, 0});
    } else {
      while (!stack.empty() && stack.back().remaining == 0) stack.pop_back();
    }
  }
  return keys;
}

bool operator==(const TensorStats& a, const TensorStats& b) {
  return a.count == b.count && a.min == b.min && a.max == b.max && a.mean == b.mean &&
         a.std == b.std && a.l2 == b.l2 && a.nan == b.nan && a.pos_inf == b.pos_inf &&
         a.neg_inf == b.neg_inf;
}

}  // namespace ckpt
