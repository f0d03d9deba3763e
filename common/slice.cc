#include "common/slice.h"

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/names.h"

namespace ckpt {
namespace {

std::string Quote(absl::string_view key) { return absl::StrCat("'", Excerpt(key, 256), "'"); }

// "[0:2, 1:3]" for start {0,1}, length {2,2} (at most 8 dimensions shown).
std::string BoxText(const TensorSlice& slice) {
  std::vector<std::string> dims;
  const size_t n = std::max(slice.start.size(), slice.length.size());
  for (size_t d = 0; d < n && d < 8; ++d) {
    const std::string a = d < slice.start.size() ? absl::StrCat(slice.start[d]) : "?";
    const std::string len = d < slice.length.size() ? absl::StrCat(slice.length[d]) : "?";
    dims.push_back(absl::StrCat(a, "+", len));
  }
  if (n > 8) dims.push_back("...");
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

}  // namespace

absl::StatusOr<uint64_t> SliceBytes(const TensorMeta& meta, const TensorSlice& slice) {
  const size_t dims = meta.shape.size();
  if (slice.start.size() != dims || slice.length.size() != dims) {
    return absl::InvalidArgumentError(absl::StrCat("slice of tensor ", Quote(slice.key), ": ",
                                                   slice.start.size(), " starts and ",
                                                   slice.length.size(), " lengths for a tensor of ",
                                                   dims, " dimensions ", ShapeText(meta.shape)));
  }
  uint64_t bytes = DTypeSize(meta.dtype);
  for (size_t d = 0; d < dims; ++d) {
    const uint64_t extent = static_cast<uint64_t>(meta.shape[d]);
    // Written so that nothing overflows: start <= extent first.
    if (slice.start[d] > extent || slice.length[d] > extent - slice.start[d]) {
      return absl::InvalidArgumentError(
          absl::StrCat("slice of tensor ", Quote(slice.key), ": box ", BoxText(slice),
                       " (start+length per dimension) is outside shape ", ShapeText(meta.shape),
                       " in dimension ", d));
    }
    // The box's element count never exceeds the tensor's, which is valid.
    bytes *= slice.length[d];
  }
  return bytes;
}

absl::StatusOr<std::vector<size_t>> FindSlices(const Tree& tree,
                                               absl::Span<const TensorSlice> slices) {
  if (slices.size() > kMaxSlices) {
    return absl::InvalidArgumentError(
        absl::StrCat(slices.size(), " tensor slices in one load (max ", kMaxSlices, ")"));
  }
  std::vector<size_t> out;
  if (slices.empty()) return out;
  const std::vector<std::string> keys = FlattenedKeys(tree);
  // Only the keys slices name are indexed: the map stays as small as the
  // request, and a node count says when one key names several nodes.
  constexpr size_t kUnseen = ~size_t{0};
  absl::flat_hash_map<absl::string_view, size_t> wanted;  // key -> slice index
  for (size_t s = 0; s < slices.size(); ++s) {
    if (!wanted.emplace(slices[s].key, s).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", Quote(slices[s].key), " sliced twice in one load"));
    }
  }
  out.assign(slices.size(), kUnseen);
  for (size_t i = 1; i < tree.size(); ++i) {
    auto it = wanted.find(keys[i]);
    if (it == wanted.end()) continue;
    const TensorSlice& slice = slices[it->second];
    if (out[it->second] != kUnseen) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slice key ", Quote(slice.key),
          " names more than one node (dict keys that contain '/'): it cannot be sliced"));
    }
    out[it->second] = i;
  }
  for (size_t s = 0; s < slices.size(); ++s) {
    const TensorSlice& slice = slices[s];
    if (out[s] == kUnseen) {
      return absl::InvalidArgumentError(
          absl::StrCat("slice of ", Quote(slice.key), ": no such key in the version"));
    }
    const Node& node = tree[out[s]];
    if (node.kind != NodeKind::kTensor) {
      return absl::InvalidArgumentError(absl::StrCat("slice of ", Quote(slice.key), ": it is a ",
                                                     NodeKindName(node.kind), ", not a tensor"));
    }
    auto bytes = SliceBytes(node.tensor, slice);
    if (!bytes.ok()) return bytes.status();
  }
  return out;
}

SliceRuns::SliceRuns(const TensorMeta& meta, const TensorSlice& slice) {
  const size_t dims = meta.shape.size();
  const uint64_t elem = DTypeSize(meta.dtype);
  for (size_t d = 0; d < dims; ++d) {
    if (slice.length[d] == 0) {
      done_ = true;
      return;
    }
  }
  if (dims == 0) {
    run_ = total_ = elem;
    runs_ = 1;
    return;
  }
  // The innermost dimension k the box does not cover whole: dimensions after
  // it are whole, so each run spans length[k] of its rows.
  size_t k = dims - 1;
  while (k > 0 && slice.start[k] == 0 && slice.length[k] == static_cast<uint64_t>(meta.shape[k])) {
    --k;
  }
  std::vector<uint64_t> stride(dims);
  uint64_t s = elem;
  for (size_t d = dims; d-- > 0;) {
    stride[d] = s;
    s *= static_cast<uint64_t>(meta.shape[d]);
  }
  run_ = slice.length[k] * stride[k];
  total_ = run_;
  runs_ = 1;
  offset_ = slice.start[k] * stride[k];
  for (size_t d = 0; d < k; ++d) {
    length_.push_back(slice.length[d]);
    stride_.push_back(stride[d]);
    offset_ += slice.start[d] * stride[d];
    total_ *= slice.length[d];
    runs_ *= slice.length[d];
  }
  index_.assign(k, 0);
}

bool SliceRuns::Next(uint64_t* offset, uint64_t* length) {
  if (done_) return false;
  *offset = offset_;
  *length = run_;
  // Odometer over the outer dimensions.
  for (size_t d = index_.size(); d-- > 0;) {
    offset_ += stride_[d];
    if (++index_[d] < length_[d]) return true;
    offset_ -= length_[d] * stride_[d];
    index_[d] = 0;
  }
  done_ = true;
  return true;
}

}  // namespace ckpt
