#ifndef CKPT_TESTS_INTEROP_TEST_UTIL_H_
#define CKPT_TESTS_INTEROP_TEST_UTIL_H_

// Helpers of the interop codec tests: a tree builder with owned bytes, zip
// archives from named records, files read whole. No gRPC, no server: these
// tests also build under AddressSanitizer + UndefinedBehaviorSanitizer.

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "common/types.h"
#include "interop/checkpoint.h"
#include "interop/file_io.h"
#include "interop/zip.h"

namespace ckpt::interop::testing {

/// A tree in pre-order with the bytes of each data node.
class Builder {
 public:
  Builder& Container(NodeKind kind, uint32_t size, NodeKey key = {}) {
    Node n;
    n.kind = kind;
    n.size = size;
    n.key = std::move(key);
    return Add(std::move(n));
  }
  Builder& Dict(uint32_t size, NodeKey key = {}) { return Container(NodeKind::kDict, size, key); }
  Builder& List(uint32_t size, NodeKey key = {}) { return Container(NodeKind::kList, size, key); }
  Builder& Tuple(uint32_t size, NodeKey key = {}) { return Container(NodeKind::kTuple, size, key); }
  Builder& Scalar(Node n, NodeKey key = {}) {
    n.key = std::move(key);
    return Add(std::move(n));
  }
  Builder& None(NodeKey key = {}) { return Scalar(Node{}, std::move(key)); }
  Builder& Bool(bool v, NodeKey key = {}) {
    Node n;
    n.kind = NodeKind::kBool;
    n.bool_value = v;
    return Scalar(std::move(n), std::move(key));
  }
  Builder& Int(int64_t v, NodeKey key = {}) {
    Node n;
    n.kind = NodeKind::kInt;
    n.int_value = v;
    return Scalar(std::move(n), std::move(key));
  }
  Builder& Float(double v, NodeKey key = {}) {
    Node n;
    n.kind = NodeKind::kFloat;
    n.float_value = v;
    return Scalar(std::move(n), std::move(key));
  }
  Builder& Str(std::string v, NodeKey key = {}) {
    Node n;
    n.kind = NodeKind::kString;
    n.string_value = std::move(v);
    return Scalar(std::move(n), std::move(key));
  }
  /// A tensor whose bytes are `bytes` (or a pattern when empty).
  Builder& Tensor(NodeKey key, DType dtype, std::vector<int64_t> shape, std::string bytes = {},
                  std::string device = "cpu", bool requires_grad = false) {
    Node n;
    n.kind = NodeKind::kTensor;
    n.key = std::move(key);
    n.tensor.dtype = dtype;
    n.tensor.shape = std::move(shape);
    n.tensor.device = std::move(device);
    n.tensor.requires_grad = requires_grad;
    n.data.size = *n.tensor.NumBytes();
    if (bytes.empty()) {
      for (uint64_t i = 0; i < n.data.size; ++i) {
        bytes.push_back(static_cast<char>((i * 37 + tree_.size() * 11 + 5) & 0xff));
      }
    }
    return Add(std::move(n), std::move(bytes));
  }
  Builder& Bytes(std::string bytes, NodeKey key = {}) {
    Node n;
    n.kind = NodeKind::kBytes;
    n.key = std::move(key);
    n.data.size = bytes.size();
    return Add(std::move(n), std::move(bytes));
  }

  const Tree& tree() const { return tree_; }
  const std::vector<std::string>& data() const { return data_; }

 private:
  Builder& Add(Node n, std::string bytes = {}) {
    tree_.push_back(std::move(n));
    data_.push_back(std::move(bytes));
    return *this;
  }
  Tree tree_;
  std::vector<std::string> data_;
};

/// Writes `b`'s tree with a writer of `format`, in pieces of at most
/// `piece` bytes; returns the file, or the first error.
inline absl::StatusOr<std::string> WriteFile(Format format, const Builder& b,
                                             size_t piece = 1 << 20,
                                             const WriteOptions& options = {}) {
  StringOutput out;
  auto writer = NewCheckpointWriter(format, b.tree(), &out, options);
  if (!writer.ok()) return writer.status();
  for (size_t i = 0; i < b.tree().size(); ++i) {
    const std::string& d = b.data()[i];
    for (size_t off = 0; off < d.size(); off += piece) {
      absl::Status s = (*writer)->Write(i, off, absl::string_view(d).substr(off, piece));
      if (!s.ok()) return s;
    }
  }
  absl::Status s = (*writer)->Finish();
  if (!s.ok()) return s;
  return out.data();
}

inline absl::Span<const uint8_t> Span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}
inline std::string Str(absl::Span<const uint8_t> s) {
  return {reinterpret_cast<const char*>(s.data()), s.size()};
}

/// A zip archive of stored records, laid out by ZipLayout.
inline std::string MakeZip(const std::vector<std::pair<std::string, std::string>>& records) {
  ZipLayout layout;
  for (const auto& [name, data] : records) layout.Add(name, data.size(), data.size());
  std::string out(layout.end_of_records(), '\0');
  for (size_t i = 0; i < records.size(); ++i) {
    layout.SetCrc(i, Crc32(0, records[i].second));
    const std::string h = layout.LocalHeader(i);
    out.replace(layout.header_offset(i), h.size(), h);
    out.replace(layout.data_offset(i), records[i].second.size(), records[i].second);
  }
  return out + layout.CentralDirectory();
}

/// The records of a zip archive (stored or deflated), in order.
inline std::vector<std::pair<std::string, std::string>> Unzip(const std::string& file) {
  std::vector<std::pair<std::string, std::string>> records;
  auto zip = ZipReader::Open(Span(file));
  if (!zip.ok()) return records;
  for (const ZipEntry& e : zip->entries()) records.emplace_back(e.name, *zip->Read(e, 1 << 30));
  return records;
}

inline std::string ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

/// ValidateTree of an imported tree, with chunk lists filled in as a save
/// would (4 MiB chunks).
inline absl::Status ValidateImported(const ImportedCheckpoint& imported) {
  Tree t = imported.tree;
  for (Node& n : t) {
    if (!n.has_data() || n.data.size == 0) continue;
    n.data.chunk_size = 4 << 20;
    n.data.chunks.resize(DataRef::NumChunks(n.data.size, n.data.chunk_size));
  }
  return ValidateTree(t, 4 << 20);
}

inline std::string DataDir() { return CKPT_INTEROP_DATA_DIR; }

}  // namespace ckpt::interop::testing

#endif  // CKPT_TESTS_INTEROP_TEST_UTIL_H_
