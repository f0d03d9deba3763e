// PickleToTree: the Python objects of a torch.save pickle as a ckpt Tree
// (dicts, lists, tuples, scalars, strings and tensors over their storages).

#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "interop/pickle.h"
#include "interop/pickle_format.h"

namespace ckpt::interop {
namespace {

class TreeConverter {
 public:
  TreeConverter(const StorageResolver& resolver, const ReadOptions& options,
                ImportedCheckpoint* out)
      : resolver_(resolver), options_(options), out_(out) {}

  absl::Status Convert(const PyObject* obj, NodeKey key, size_t depth) {
    if (depth > kMaxDepth) {
      return Error(absl::StrCat("nested deeper than ", kMaxDepth));
    }
    if (out_->tree.size() >= options_.max_nodes) {
      return Error(absl::StrCat("more than ", options_.max_nodes, " values"));
    }
    Node node;
    node.key = std::move(key);
    const size_t index = out_->tree.size();
    out_->tree.emplace_back();
    out_->bytes.emplace_back();
    switch (obj->kind) {
      case PyKind::kNone:
        node.kind = NodeKind::kNone;
        break;
      case PyKind::kBool:
        node.kind = NodeKind::kBool;
        node.bool_value = obj->b;
        break;
      case PyKind::kInt:
        node.kind = NodeKind::kInt;
        node.int_value = obj->i;
        break;
      case PyKind::kBigInt:
        return Error("int does not fit in 64 bits");
      case PyKind::kFloat:
        node.kind = NodeKind::kFloat;
        node.float_value = obj->f;
        break;
      case PyKind::kStr:
        if (obj->s.size() > kMaxInlineString) {
          return Error(
              absl::StrCat("string of ", obj->s.size(), " bytes (max ", kMaxInlineString, ")"));
        }
        CKPT_RETURN_IF_ERROR(Text(obj->s.size()));
        node.kind = NodeKind::kString;
        node.string_value = obj->s;
        break;
      case PyKind::kBytes: {
        node.kind = NodeKind::kBytes;
        node.data.size = obj->s.size();
        CKPT_RETURN_IF_ERROR(Copied(obj->s.size()));
        out_->owned.push_back(obj->s);
        const std::string& owned = out_->owned.back();
        out_->bytes[index] = {reinterpret_cast<const uint8_t*>(owned.data()), owned.size()};
        break;
      }
      case PyKind::kTensor:
        node.kind = NodeKind::kTensor;
        CKPT_RETURN_IF_ERROR(Tensor(obj->tensor, index, &node));
        break;
      case PyKind::kList:
      case PyKind::kTuple:
      case PyKind::kDict: {
        if (!on_path_.insert(obj).second) return Error("contains itself (a cycle)");
        const size_t n = obj->kind == PyKind::kDict ? obj->entries.size() : obj->items.size();
        if (n > std::numeric_limits<uint32_t>::max()) return Error("too many items");
        node.size = static_cast<uint32_t>(n);
        if (obj->kind == PyKind::kDict) {
          node.kind = NodeKind::kDict;
          for (const auto& [k, v] : obj->entries) {
            NodeKey child_key;
            if (k->kind == PyKind::kStr) {
              child_key = k->s;
            } else if (k->kind == PyKind::kInt) {
              child_key = k->i;
            } else {
              return Error(absl::StrCat("dict key of type ", KindName(k->kind),
                                        " (only str and int keys are supported)"));
            }
            if (k->kind == PyKind::kStr) CKPT_RETURN_IF_ERROR(Text(k->s.size()));
            path_.push_back({k, 0});
            CKPT_RETURN_IF_ERROR(Convert(v, std::move(child_key), depth + 1));
            path_.pop_back();
          }
        } else {
          node.kind = obj->kind == PyKind::kList ? NodeKind::kList : NodeKind::kTuple;
          for (size_t i = 0; i < n; ++i) {
            path_.push_back({nullptr, i});
            CKPT_RETURN_IF_ERROR(Convert(obj->items[i], NodeKey{}, depth + 1));
            path_.pop_back();
          }
        }
        on_path_.erase(obj);
        break;
      }
      case PyKind::kGlobal:
        return Error(absl::StrCat("a bare ", obj->s, " is not a value"));
      case PyKind::kStorage:
        return Error("a bare storage is not a value");
    }
    out_->tree[index] = std::move(node);
    return absl::OkStatus();
  }

 private:
  // The flattened key of the value being converted, built only for errors
  // (building it for every value would cost the key lengths times the depth).
  std::string Path() const {
    std::string path;
    for (const auto& [key, index] : path_) {
      if (!path.empty()) path += "/";
      if (key == nullptr) {
        absl::StrAppend(&path, index);
      } else if (key->kind == PyKind::kStr) {
        path += key->s.substr(0, 200);
      } else {
        absl::StrAppend(&path, key->i);
      }
    }
    return path;
  }
  absl::Status Error(absl::string_view message) const {
    const std::string path = Path();
    return absl::InvalidArgumentError(absl::StrCat(
        "value ", path.empty() ? "<root>" : absl::StrCat("'", path, "'"), ": ", message));
  }
  // Keys and strings copied into the tree: bounded, since shared objects
  // are copied once per reference.
  absl::Status Text(uint64_t n) {
    if (n > kMaxInlineString) {
      return Error(absl::StrCat("key or string of ", n, " bytes (max ", kMaxInlineString, ")"));
    }
    text_bytes_ += n;
    if (text_bytes_ > kMaxTextBytes) {
      return Error(absl::StrCat("more than ", kMaxTextBytes, " bytes of keys and strings"));
    }
    return absl::OkStatus();
  }
  absl::Status Copied(uint64_t n) {
    out_->copied_bytes += n;
    if (out_->copied_bytes > options_.max_copied_bytes) {
      return Error(absl::StrCat("more than ", options_.max_copied_bytes,
                                " bytes would be copied out of the file"));
    }
    return absl::OkStatus();
  }

  absl::Status Tensor(const PyTensor& t, size_t index, Node* node) {
    node->tensor.dtype = t.dtype;
    node->tensor.shape = t.shape;
    node->tensor.device = t.storage->location;
    node->tensor.requires_grad = t.requires_grad;
    for (char c : node->tensor.device) {
      if (c <= 0x20 || c >= 0x7f) return Error("invalid device string");
    }
    const uint64_t es = DTypeSize(t.dtype);
    if (es == 0) return Error("unsupported dtype");
    auto numel_or = node->tensor.NumElements();
    if (!numel_or.ok()) return Error(numel_or.status().message());
    const uint64_t numel = *numel_or;
    auto bytes_or = node->tensor.NumBytes();
    if (!bytes_or.ok()) return Error(bytes_or.status().message());
    node->data.size = *bytes_or;

    // The storage's bytes, resolved once per storage.
    auto it = resolved_.find(t.storage);
    if (it == resolved_.end()) {
      auto span = resolver_(*t.storage);
      if (!span.ok()) return Annotate(span.status(), absl::StrCat("value '", Path(), "'"));
      it = resolved_.emplace(t.storage, *span).first;
    }
    const absl::Span<const uint8_t> storage = it->second;
    const uint64_t storage_elems = storage.size() / es;
    if (numel == 0) return absl::OkStatus();

    // Last element touched; every term is non-negative so the sum only grows.
    unsigned __int128 last = t.offset;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      last += static_cast<unsigned __int128>(t.shape[d] - 1) * static_cast<uint64_t>(t.stride[d]);
      if (last >= storage_elems) break;
    }
    if (last >= storage_elems) {
      return Error(absl::StrCat("view (offset ", t.offset, ", size ", ShapeText(t.shape),
                                ", stride ", ShapeText(t.stride),
                                ") reaches past the end of its storage of ", storage_elems,
                                " elements"));
    }
    bool contiguous = true;
    uint64_t expect = 1;
    for (size_t d = t.shape.size(); d-- > 0;) {
      if (t.shape[d] != 1 && static_cast<uint64_t>(t.stride[d]) != expect) contiguous = false;
      expect *= static_cast<uint64_t>(t.shape[d]);
    }
    if (contiguous) {
      out_->bytes[index] = storage.subspan(t.offset * es, numel * es);
      return absl::OkStatus();
    }
    // A strided view: copy its elements out in row-major order, innermost
    // dimension by dimension.
    CKPT_RETURN_IF_ERROR(Copied(numel * es));
    out_->owned.emplace_back();
    std::string& buf = out_->owned.back();
    buf.resize(numel * es);
    const size_t dims = t.shape.size();
    std::vector<int64_t> idx(dims, 0);
    const uint64_t inner = static_cast<uint64_t>(t.shape[dims - 1]);
    const uint64_t inner_stride = static_cast<uint64_t>(t.stride[dims - 1]);
    uint8_t* dst = reinterpret_cast<uint8_t*>(buf.data());
    for (uint64_t done = 0; done < numel; done += inner) {
      uint64_t base = t.offset;
      for (size_t d = 0; d + 1 < dims; ++d) base += idx[d] * static_cast<uint64_t>(t.stride[d]);
      if (inner_stride == 1) {
        std::memcpy(dst, storage.data() + base * es, inner * es);
        dst += inner * es;
      } else {
        for (uint64_t k = 0; k < inner; ++k) {
          std::memcpy(dst, storage.data() + (base + k * inner_stride) * es, es);
          dst += es;
        }
      }
      for (size_t d = dims - 1; d-- > 0;) {
        if (++idx[d] < t.shape[d]) break;
        idx[d] = 0;
      }
    }
    out_->bytes[index] = {reinterpret_cast<const uint8_t*>(buf.data()), buf.size()};
    return absl::OkStatus();
  }

  static std::string ShapeText(const std::vector<int64_t>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) absl::StrAppend(&s, i ? ", " : "", v[i]);
    return s + "]";
  }

  const StorageResolver& resolver_;
  const ReadOptions& options_;
  ImportedCheckpoint* out_;
  static constexpr uint64_t kMaxTextBytes = 256ull << 20;
  std::vector<std::pair<const PyObject*, size_t>> path_;  // dict key, or list index
  uint64_t text_bytes_ = 0;
  absl::flat_hash_set<const PyObject*> on_path_;
  absl::flat_hash_map<const StorageRef*, absl::Span<const uint8_t>> resolved_;
};

}  // namespace

absl::StatusOr<uint64_t> StorageNumBytes(const StorageRef& ref) {
  const uint64_t es = DTypeSize(ref.dtype);
  if (es == 0) return absl::InvalidArgumentError("storage of unknown dtype");
  if (ref.numel > (uint64_t{1} << 62) / es) {
    return absl::InvalidArgumentError(
        absl::StrCat("storage '", ref.key, "' of ", ref.numel, " elements is too large"));
  }
  return ref.numel * es;
}

absl::Status PickleToTree(const PickleValue& value, const StorageResolver& resolver,
                          const ReadOptions& options, ImportedCheckpoint* out) {
  if (value.root == nullptr) return absl::InvalidArgumentError("empty pickle");
  TreeConverter converter(resolver, options, out);
  return converter.Convert(value.root, NodeKey{}, 0);
}

}  // namespace ckpt::interop
