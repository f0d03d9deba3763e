// The Diff RPC: two versions' tensors compared key by key. Identical chunk
// lists need no read; other tensors of one dtype and shape are streamed
// chunk by chunk from both (two chunks in memory) through DiffAccumulator.

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/tensor_diff.h"
#include "rpc/convert.h"
#include "rpc/protocol.h"
#include "server/queries.h"
#include "server/service_internal.h"

namespace ckpt::server {
namespace {

constexpr uint32_t kDefaultDiffEntries = 1000;
constexpr uint32_t kMaxDiffEntries = 10000;

// One tensor's bytes, read chunk by chunk from its checkpoint's namespace.
class ChunkReader {
 public:
  ChunkReader(storage::Store* store, const std::string& name, const Node& node)
      : store_(store), name_(name), node_(node) {}

  // The next bytes (at most `max`), reading the next chunk when the
  // current one is used up. Empty at the end.
  absl::StatusOr<absl::string_view> Next(size_t max) {
    if (offset_ == chunk_.size()) {
      if (next_chunk_ == node_.data.chunks.size()) return absl::string_view();
      CKPT_RETURN_IF_ERROR(store_->ReadChunk(name_, node_.data.chunks[next_chunk_++], &chunk_));
      offset_ = 0;
      read_ += chunk_.size();
    }
    const size_t n = std::min(max, chunk_.size() - offset_);
    absl::string_view out(chunk_.data() + offset_, n);
    offset_ += n;
    return out;
  }
  uint64_t bytes_read() const { return read_; }

 private:
  storage::Store* store_;
  const std::string& name_;
  const Node& node_;
  std::string chunk_;
  size_t offset_ = 0;
  size_t next_chunk_ = 0;
  uint64_t read_ = 0;
};

// Tensors of a tree by flattened key.
std::map<std::string, size_t> TensorsByKey(const Tree& tree) {
  std::map<std::string, size_t> out;
  const std::vector<std::string> keys = FlattenedKeys(tree);
  for (size_t i = 0; i < tree.size(); ++i) {
    if (tree[i].kind == NodeKind::kTensor) out.emplace(keys[i], i);
  }
  return out;
}

TensorDiff MetaOf(const std::string& key, TensorChange change, const Node* a, const Node* b) {
  TensorDiff d;
  d.key = key;
  d.change = change;
  if (a != nullptr) {
    d.dtype_a = a->tensor.dtype;
    d.shape_a = a->tensor.shape;
  }
  if (b != nullptr) {
    d.dtype_b = b->tensor.dtype;
    d.shape_b = b->tensor.shape;
  }
  return d;
}

}  // namespace

absl::StatusOr<VersionDiff> DiffVersions(storage::Store* store, const DiffQuery& query) {
  const std::string& name_a = query.name_a;
  const std::string& name_b = query.name_b;
  const size_t max_entries = query.max_entries;
  VersionDiff diff;
  CKPT_ASSIGN_OR_RETURN(diff.a, store->GetVersion(name_a, query.a));
  CKPT_ASSIGN_OR_RETURN(diff.b, store->GetVersion(name_b, query.b));
  CKPT_ASSIGN_OR_RETURN(Tree tree_a, store->GetTree(name_a, diff.a.version));
  CKPT_ASSIGN_OR_RETURN(Tree tree_b, store->GetTree(name_b, diff.b.version));
  const std::map<std::string, size_t> in_a = TensorsByKey(tree_a);
  const std::map<std::string, size_t> in_b = TensorsByKey(tree_b);
  std::vector<TensorDiff> entries;
  for (const auto& [key, ia] : in_a) {
    const Node& a = tree_a[ia];
    auto it = in_b.find(key);
    if (it == in_b.end()) {
      ++diff.only_in_a;
      entries.push_back(MetaOf(key, TensorChange::kOnlyInA, &a, nullptr));
      continue;
    }
    const Node& b = tree_b[it->second];
    if (a.tensor.dtype != b.tensor.dtype || a.tensor.shape != b.tensor.shape) {
      ++diff.meta_changed;
      entries.push_back(MetaOf(key, TensorChange::kMetaChanged, &a, &b));
      continue;
    }
    // Same chunks (same namespace, or same digests of the same bytes
    // anywhere): identical without a read.
    if (a.data.chunk_size == b.data.chunk_size && a.data.chunks == b.data.chunks) {
      ++diff.identical;
      continue;
    }
    DiffAccumulator acc(a.tensor.dtype);
    ChunkReader read_a(store, name_a, a), read_b(store, name_b, b);
    for (;;) {
      CKPT_ASSIGN_OR_RETURN(absl::string_view piece_a, read_a.Next(SIZE_MAX));
      if (piece_a.empty()) break;
      while (!piece_a.empty()) {
        CKPT_ASSIGN_OR_RETURN(absl::string_view piece_b, read_b.Next(piece_a.size()));
        if (piece_b.empty()) return absl::DataLossError("tensor '" + key + "' is short");
        acc.Add(piece_a.substr(0, piece_b.size()), piece_b);
        piece_a.remove_prefix(piece_b.size());
      }
    }
    diff.bytes_compared += read_a.bytes_read() + read_b.bytes_read();
    if (acc.identical()) {
      ++diff.identical;
      continue;
    }
    ++diff.changed;
    TensorDiff d = MetaOf(key, TensorChange::kChanged, &a, &b);
    acc.Finish(&d);
    entries.push_back(std::move(d));
  }
  for (const auto& [key, ib] : in_b) {
    if (in_a.count(key) == 0) {
      ++diff.only_in_b;
      entries.push_back(MetaOf(key, TensorChange::kOnlyInB, nullptr, &tree_b[ib]));
    }
  }
  SortTensorDiffs(&entries);
  // At most max_entries, and what fits a message (keys may be long).
  size_t keep = 0, bytes = 0;
  while (keep < entries.size() && keep < max_entries && bytes < 3 * rpc::kNodeBatchBytes) {
    bytes += entries[keep++].key.size() + 96;
  }
  diff.truncated = entries.size() - keep;
  entries.resize(keep);
  diff.tensors = std::move(entries);
  return diff;
}

grpc::ServerUnaryReactor* CheckpointService::Diff(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* raw_request,
                                                  grpc::ByteBuffer* raw_response) {
  return RunUnary<v1::DiffRequest, v1::DiffResponse>(
      context, raw_request, raw_response, "Diff",
      [this](const Principal& principal, CallRecord& record, const v1::DiffRequest& request,
             v1::DiffResponse* response) -> absl::Status {
        const std::string& name_a = request.name();
        const std::string& name_b = request.other_name().empty() ? name_a : request.other_name();
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, name_a));
        CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, name_b));
        if (request.max_entries() > kMaxDiffEntries) {
          return absl::InvalidArgumentError(
              absl::StrCat("max_entries ", request.max_entries(), " over ", kMaxDiffEntries));
        }
        DiffQuery query;
        query.name_a = name_a;
        query.a = {request.version(), request.tag()};
        query.name_b = name_b;
        query.b = {request.other_version(), request.other_tag()};
        query.max_entries =
            request.max_entries() == 0 ? kDefaultDiffEntries : request.max_entries();
        CKPT_ASSIGN_OR_RETURN(VersionDiff diff, DiffVersions(store_, query));
        record.set_version(diff.a.version);
        rpc::ToProto(diff, response);
        return absl::OkStatus();
      });
}

}  // namespace ckpt::server
