#ifndef CKPT_COMMON_TYPES_H_
#define CKPT_COMMON_TYPES_H_

// Value types shared by the storage engine, the server and the clients: the
// flattened value tree of a checkpoint, tensor metadata and version records.
// No protobuf, no gRPC, no LibTorch.

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace ckpt {

/// Element type of a tensor. Numeric values are the wire values of ckpt.v1.DType.
enum class DType : int {
  kUnspecified = 0,
  kFloat32 = 1,
  kFloat64 = 2,
  kFloat16 = 3,
  kBFloat16 = 4,
  kInt8 = 5,
  kInt16 = 6,
  kInt32 = 7,
  kInt64 = 8,
  kUInt8 = 9,
  kBool = 10,
  kComplex64 = 11,
  kComplex128 = 12,
  kUInt16 = 13,
  kUInt32 = 14,
  kUInt64 = 15,
};

/// Largest valid DType value.
inline constexpr int kMaxDType = 15;

/// A shape as users see it in messages and listings: "[2, 3]", "[]" for a
/// scalar. The one formatter of shapes.
std::string ShapeText(absl::Span<const int64_t> shape);

/// Bytes per element; 0 for kUnspecified or an out-of-range value.
size_t DTypeSize(DType dtype);

/// PyTorch's name without the "torch." prefix ("float32", "bfloat16"), or
/// "unspecified".
absl::string_view DTypeName(DType dtype);

/// Inverse of DTypeName; also accepts PyTorch aliases ("float", "half",
/// "long", "int", "double", "cfloat", "cdouble", "short"). NotFound otherwise.
absl::StatusOr<DType> ParseDType(absl::string_view name);

/// A 128-bit content digest (XXH3-128), big-endian: high 64 bits first.
struct Digest {
  std::array<uint8_t, 16> bytes{};

  /// Digest of `data`.
  static Digest Of(absl::Span<const uint8_t> data);
  static Digest Of(absl::string_view data);
  /// From exactly 16 raw bytes; InvalidArgument otherwise.
  static absl::StatusOr<Digest> FromBytes(absl::string_view raw);

  absl::string_view view() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
  /// 32 lowercase hex characters.
  std::string Hex() const;

  friend bool operator==(const Digest& a, const Digest& b) { return a.bytes == b.bytes; }
  friend bool operator!=(const Digest& a, const Digest& b) { return !(a == b); }
  friend bool operator<(const Digest& a, const Digest& b) { return a.bytes < b.bytes; }
  template <typename H>
  friend H AbslHashValue(H h, const Digest& d) {
    return H::combine(std::move(h), d.view());
  }
};

/// Where the bytes of a tensor or byte leaf live: fixed-size chunks, each
/// addressed by its digest.
struct DataRef {
  uint64_t size = 0;        ///< Total bytes.
  uint32_t chunk_size = 0;  ///< Bytes per chunk (the last may be shorter).
  std::vector<Digest> chunks;

  /// Number of chunks `size` bytes need at `chunk_size` (0 if either is 0).
  static uint64_t NumChunks(uint64_t size, uint32_t chunk_size);
  /// Length of chunk `i`.
  uint64_t ChunkLength(size_t i) const;
};

/// Statistics of a tensor's values, computed by the client as it hashes the
/// bytes (common/tensor_stats.h) and stored with the version's manifest.
/// min, max, mean, std and l2 are over the finite elements only (NaN and
/// infinities are counted apart); all zero when there is none. mean, std
/// and l2 are +-inf when they overflow double (float64 values near DBL_MAX).
/// Integer and bool tensors have no NaN or infinities.
struct TensorStats {
  uint64_t count = 0;  ///< Elements (the tensor's numel).
  double min = 0;
  double max = 0;
  double mean = 0;
  double std = 0;  ///< Population standard deviation.
  double l2 = 0;   ///< sqrt(sum of squares).
  uint64_t nan = 0;
  uint64_t pos_inf = 0;
  uint64_t neg_inf = 0;

  uint64_t nonfinite() const { return nan + pos_inf + neg_inf; }
  friend bool operator==(const TensorStats& a, const TensorStats& b);
};

/// Metadata of a dense, contiguous, row-major tensor.
struct TensorMeta {
  DType dtype = DType::kUnspecified;
  std::vector<int64_t> shape;
  std::string device = "cpu";  ///< Device when saved, e.g. "cuda:1".
  bool requires_grad = false;
  /// Statistics of its values; absent when the writer sent none (older
  /// clients, complex dtypes).
  std::optional<TensorStats> stats;

  /// Number of elements, or InvalidArgument on a negative dimension or
  /// overflow past 2^62.
  absl::StatusOr<uint64_t> NumElements() const;
  /// NumElements() * DTypeSize(dtype), with the same checks.
  absl::StatusOr<uint64_t> NumBytes() const;
};

/// What a node of the value tree holds.
enum class NodeKind : int {
  kDict,
  kList,
  kTuple,
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kTensor,
  kBytes,
};

/// "dict", "list", ..., "tensor", "bytes".
absl::string_view NodeKindName(NodeKind kind);

/// Key of a node within its parent: none (root, list/tuple element), a
/// string, or an integer (e.g. optimizer state's parameter index).
using NodeKey = std::variant<std::monostate, std::string, int64_t>;

/// One node of a value tree in pre-order. A container's `size` children
/// follow it.
struct Node {
  NodeKind kind = NodeKind::kNone;
  NodeKey key;
  uint32_t size = 0;  ///< Children (containers only).
  bool bool_value = false;
  int64_t int_value = 0;
  double float_value = 0;
  std::string string_value;
  TensorMeta tensor;  ///< kTensor only.
  DataRef data;       ///< kTensor and kBytes.

  bool is_container() const {
    return kind == NodeKind::kDict || kind == NodeKind::kList || kind == NodeKind::kTuple;
  }
  bool has_data() const { return kind == NodeKind::kTensor || kind == NodeKind::kBytes; }
};

/// A value tree flattened in pre-order.
using Tree = std::vector<Node>;

/// Largest inline string in a tree.
inline constexpr size_t kMaxInlineString = 64 * 1024;
/// Most dimensions a tensor may have.
inline constexpr size_t kMaxDims = 64;
/// Deepest nesting of containers.
inline constexpr size_t kMaxDepth = 128;
/// Longest flattened key of a node ("model_state_dict/fc.weight": dict keys
/// and list indices joined by "/"), and so of any one dict key.
inline constexpr size_t kMaxKeyLength = 64 * 1024;
/// Most bytes of flattened keys in one tree, summed over its nodes: what
/// listing every key of it costs (a long key shared by many children counts
/// once per child).
inline constexpr size_t kMaxTotalKeyBytes = 64 << 20;

/// Checks one tensor or byte leaf on its own: dtype x shape agree with the
/// data size (no negative dims, no overflow), the chunk list agrees with size
/// and chunk_size (<= max_chunk_bytes), the device string is sane.
/// InvalidArgument naming `key` otherwise. OK for other kinds.
absl::Status ValidateNodeData(const Node& node, absl::string_view key, uint32_t max_chunk_bytes);

/// Checks that `tree` is one well-formed tree: container sizes add up, dict
/// children have keys and no duplicates, other nodes' children have none,
/// tensor dtype/shape agree with the data size, chunk lists agree with size
/// and chunk_size (<= max_chunk_bytes), strings fit, nesting is at most
/// kMaxDepth, flattened keys fit kMaxKeyLength each and kMaxTotalKeyBytes
/// in all. InvalidArgument naming the offending key otherwise. Time and
/// memory are linear in the tree's size plus its keys' bytes.
absl::Status ValidateTree(const Tree& tree, uint32_t max_chunk_bytes);

/// Flattened key of every node ("model_state_dict/fc.weight"; list indices as
/// numbers; the root is ""). Assumes a valid tree (whose keys ValidateTree
/// bounds to kMaxTotalKeyBytes in all).
std::vector<std::string> FlattenedKeys(const Tree& tree);

/// Limits of a version's user metadata: each key, each value, the number of
/// entries and the bytes of keys and values in all (so that a version, and
/// a page of ListVersions, always fits a message).
inline constexpr size_t kMaxMetadataKey = 1024;
inline constexpr size_t kMaxMetadataValue = 64 * 1024;
inline constexpr size_t kMaxMetadataEntries = 1024;
inline constexpr size_t kMaxMetadataBytes = 256 * 1024;

/// OK if `metadata` is within the limits above; InvalidArgument saying which
/// otherwise.
absl::Status ValidateMetadata(const std::map<std::string, std::string>& metadata);

/// Record of a committed version.
struct VersionInfo {
  std::string name;            ///< The checkpoint name ("team/run-1/model").
  uint64_t version = 0;        ///< 1, 2, 3, ... per name: never reused, no gaps at commit.
  int64_t create_time_ms = 0;  ///< Commit time, Unix time in milliseconds.
  int64_t step = 0;            ///< SaveOptions::step of the save (0 if unset).
  int64_t epoch = 0;           ///< SaveOptions::epoch of the save (0 if unset).
  std::map<std::string, std::string> metadata;  ///< SaveOptions::metadata.
  /// User tags pointing at this version, sorted, plus "latest" for the
  /// newest. Filled on read; not stored with the version.
  std::vector<std::string> tags;
  uint64_t num_tensors = 0;  ///< Tensor leaves in the tree.
  uint64_t num_nodes = 0;    ///< Nodes of the tree (containers and leaves).
  uint64_t data_bytes = 0;   ///< Bytes of all tensor and byte leaves (logical size).
  /// Bytes of the chunks this version added to the store: those no earlier
  /// version of its namespace held (what dedup did not save).
  uint64_t new_bytes = 0;
  uint32_t world_size = 1;  ///< Parts (ranks) the version was saved in.
  /// Lineage: "NAME@VERSION" this version was trained from (a resumed
  /// run's last load, a warm start); empty: none. The parent may have been
  /// deleted since.
  std::string parent;
};

/// Summary of one checkpoint name.
struct CheckpointSummary {
  std::string name;
  uint64_t latest_version = 0;
  uint64_t num_versions = 0;
  int64_t latest_create_time_ms = 0;
};

/// Totals over the whole store.
struct StoreStats {
  uint64_t checkpoints = 0;
  uint64_t versions = 0;
  uint64_t chunks = 0;         ///< Distinct chunks referenced by versions.
  uint64_t stored_bytes = 0;   ///< Their bytes.
  uint64_t logical_bytes = 0;  ///< Sum of data_bytes over versions.
  uint64_t disk_bytes = 0;     ///< Live SST + WAL bytes on disk.
  uint64_t active_uploads = 0;
  /// Bytes garbage collection would reclaim now: unreferenced chunks and
  /// those of uploads that died before their commit (not in stored_bytes).
  uint64_t garbage_bytes = 0;
};

/// Result of a garbage collection.
struct GcResult {
  uint64_t chunks_removed = 0;
  uint64_t bytes_removed = 0;
  uint64_t orphan_uploads_removed = 0;
};

/// A consistent copy of the whole store taken while it serves (Store::Backup,
/// the Backup RPC). The directory is itself a data directory: a server
/// started on it (or on a copy of it) serves every version it holds.
struct BackupInfo {
  std::string name;       ///< The backup's directory name.
  std::string path;       ///< Where it is, on the server's machine.
  uint64_t files = 0;     ///< Files in it.
  uint64_t bytes = 0;     ///< Their total size (hard links to the live store's
                          ///< files when on the same file system: little new disk).
  uint64_t versions = 0;  ///< Committed versions it holds.
};

/// Server identity and totals (RawClient::GetServerInfo, the GetServerInfo RPC).
struct ServerInfo {
  std::string server_version;
  uint32_t chunk_size = 0;
  uint32_t max_message_bytes = 0;
  StoreStats stats;
  double dedup_ratio = 1;
};

/// One namespace's usage (RawClient::GetUsage, the GetUsage RPC).
struct NamespaceUsage {
  std::string ns;
  /// Bytes of the distinct chunks its committed versions reference: what
  /// its quota limits.
  uint64_t used_bytes = 0;
  /// Its quota; 0: no limit.
  uint64_t quota_bytes = 0;
};

}  // namespace ckpt

#endif  // CKPT_COMMON_TYPES_H_
