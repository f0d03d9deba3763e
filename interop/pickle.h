#ifndef CKPT_INTEROP_PICKLE_H_
#define CKPT_INTEROP_PICKLE_H_

// A restricted, weights-only unpickler for the data.pkl of torch.save, and
// the opcode encoder the .pt writer uses. Pure codecs: no I/O.
//
// The unpickler is a data parser, not a virtual machine: it knows the few
// globals torch.save emits (collections.OrderedDict, torch._utils'
// _rebuild_tensor_v2/_v3/_rebuild_tensor, _rebuild_parameter[_with_state],
// the storage classes, dtypes, torch.Size, and _codecs.encode and bytes()
// for bytes) and builds their results itself. Any other global is rejected when it is
// named, with an error naming it; nothing is ever imported or called.

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/types.h"
#include "interop/checkpoint.h"

namespace ckpt::interop {

/// A storage named by a persistent id ('storage', type, key, location,
/// numel).
struct StorageRef {
  std::string key;                    ///< Record name under data/.
  std::string location;               ///< Device when saved: "cpu", "cuda:1".
  DType dtype = DType::kUnspecified;  ///< kUInt8 for UntypedStorage.
  bool untyped = false;               ///< torch.storage.UntypedStorage (numel = bytes).
  uint64_t numel = 0;                 ///< Elements of dtype.
};

/// What a Python object decoded from a pickle is.
enum class PyKind {
  kNone,
  kBool,
  kInt,
  kBigInt,  ///< An int outside int64 (kept only to report it).
  kFloat,
  kStr,
  kBytes,
  kList,
  kTuple,
  kDict,
  kGlobal,   ///< An allowed global (a callable or class): see PyGlobal.
  kStorage,  ///< A storage from a persistent id.
  kTensor,
};

/// The allowed globals.
enum class PyGlobal {
  kNone,
  kOrderedDict,
  kRebuildTensor,    ///< torch._utils._rebuild_tensor (v1)
  kRebuildTensorV2,  ///< torch._utils._rebuild_tensor_v2
  kRebuildTensorV3,  ///< torch._utils._rebuild_tensor_v3
  kRebuildParameter,
  kRebuildParameterWithState,
  kStorageType,   ///< torch.FloatStorage, ..., torch.storage.UntypedStorage
  kDType,         ///< torch.float32, ...
  kSize,          ///< torch.Size
  kCodecsEncode,  ///< _codecs.encode
  kBytes,         ///< builtins.bytes (only bytes() = b"")
};

/// A tensor: a view into a storage.
struct PyTensor {
  const StorageRef* storage = nullptr;
  DType dtype = DType::kUnspecified;
  uint64_t offset = 0;  ///< In elements of dtype.
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;
  bool requires_grad = false;
};

/// A decoded Python object. Owned by its PickleValue's arena; references
/// between objects are plain pointers (objects may be shared or cyclic).
struct PyObject {
  PyKind kind = PyKind::kNone;
  bool ordered = false;  ///< kDict: an OrderedDict.
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  ///< kStr, kBytes; kGlobal: "module.name".
  PyGlobal global = PyGlobal::kNone;
  DType dtype = DType::kUnspecified;                     ///< kGlobal kStorageType / kDType.
  bool untyped = false;                                  ///< kGlobal kStorageType.
  std::vector<PyObject*> items;                          ///< kList, kTuple.
  std::vector<std::pair<PyObject*, PyObject*>> entries;  ///< kDict, in order.
  const StorageRef* storage = nullptr;                   ///< kStorage.
  PyTensor tensor;                                       ///< kTensor.
};

/// The object graph of one pickle.
struct PickleValue {
  std::deque<PyObject> objects;  ///< The arena.
  std::deque<StorageRef> storages;
  PyObject* root = nullptr;
};

/// Limits of ParsePickle.
struct PickleOptions {
  /// Most objects created. Default: 8,000,000.
  uint64_t max_objects = 8'000'000;
};

/// Decodes `data` (a pickle, protocols 2-5) with the restricted rules above.
/// InvalidArgument "pickle offset N: ..." for truncated input, an opcode
/// that is not supported, a disallowed global (naming it), wrong arguments
/// to a torch rebuild function, a bad persistent id or a memo miss.
absl::StatusOr<PickleValue> ParsePickle(absl::string_view data, const PickleOptions& options);

/// Gives the bytes of a storage: the whole storage, StorageNumBytes(ref)
/// long. Called once per distinct storage key.
using StorageResolver =
    std::function<absl::StatusOr<absl::Span<const uint8_t>>(const StorageRef& ref)>;

/// Bytes of a storage: numel * element size; InvalidArgument on overflow.
absl::StatusOr<uint64_t> StorageNumBytes(const StorageRef& ref);

/// Converts a decoded pickle into a value tree, appending to `out` (tree,
/// bytes, owned). Tensors that are contiguous views point into their storage;
/// others are copied out contiguously. Every offset, shape and stride is
/// checked against the storage's size. InvalidArgument naming the flattened
/// key for values the tree cannot hold (a dict key that is not str or int,
/// an int outside int64, a cycle, nesting deeper than kMaxDepth, more than
/// options.max_nodes nodes).
absl::Status PickleToTree(const PickleValue& value, const StorageResolver& resolver,
                          const ReadOptions& options, ImportedCheckpoint* out);

/// Appends pickle opcodes (protocol 2, the subset torch.load's weights-only
/// unpicklers of PyTorch 1.13 and 2.x accept) to a string.
class PickleEncoder {
 public:
  explicit PickleEncoder(std::string* out) : out_(out) {}

  void Proto();  ///< PROTO 2
  void Stop();
  void Mark();
  void None();
  void Bool(bool v);
  /// BININT1 / BININT2 / BININT / LONG1, the smallest that holds `v`.
  void Int(int64_t v);
  void Float(double v);  ///< BINFLOAT
  /// BINUNICODE of UTF-8 text (the caller checks it is UTF-8).
  void Str(absl::string_view utf8);
  /// GLOBAL "module\nname\n", memoized: later uses of the same global are a
  /// BINGET.
  void Global(absl::string_view module, absl::string_view name);
  void EmptyTuple();
  /// A tuple of the `n` items on the stack above the last mark (n > 3) or the
  /// last n items (TUPLE1..3).
  void Tuple(size_t n);
  void Reduce();
  void EmptyDict();
  void SetItems();  ///< SETITEMS (after Mark and key/value pairs)
  void EmptyList();
  void Appends();  ///< APPENDS (after Mark and items)
  void BinPersId();
  /// A tuple of ints: EMPTY_TUPLE / TUPLE1..3 / MARK ... TUPLE.
  void IntTuple(absl::Span<const int64_t> values);
  /// Raw bytes (for callers that stream a BINUNICODE body themselves).
  void Raw(absl::string_view bytes) { out_->append(bytes.data(), bytes.size()); }

 private:
  std::string* out_;
  std::vector<std::pair<std::string, uint32_t>> globals_;
  uint32_t next_memo_ = 0;
};

/// Whether `s` is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
bool IsValidUtf8(absl::string_view s);

/// PyTorch's storage class name for a dtype ("FloatStorage"), or "" for
/// dtypes saved as UntypedStorage (uint16/32/64) or unknown.
absl::string_view StorageClassName(DType dtype);

}  // namespace ckpt::interop

#endif  // CKPT_INTEROP_PICKLE_H_
