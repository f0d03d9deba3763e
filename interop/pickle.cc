#include "interop/pickle.h"

#include <cstring>
#include <limits>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace ckpt::interop {
namespace {

// Opcodes (Python's Lib/pickletools.py).
enum Op : uint8_t {
  kMark = '(',
  kStop = '.',
  kPop = '0',
  kPopMark = '1',
  kDup = '2',
  kFloatText = 'F',
  kIntText = 'I',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kLongText = 'L',
  kBinInt2 = 'M',
  kNone = 'N',
  kPersIdText = 'P',
  kBinPersId = 'Q',
  kReduce = 'R',
  kStringText = 'S',
  kBinString = 'T',
  kShortBinString = 'U',
  kUnicodeText = 'V',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kDict = 'd',
  kEmptyDict = '}',
  kAppends = 'e',
  kGet = 'g',
  kBinGet = 'h',
  kInst = 'i',
  kLongBinGet = 'j',
  kList = 'l',
  kEmptyList = ']',
  kObj = 'o',
  kPut = 'p',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kEmptyTuple = ')',
  kSetItems = 'u',
  kBinFloat = 'G',
  kProto = 0x80,
  kNewObj = 0x81,
  kExt1 = 0x82,
  kExt2 = 0x83,
  kExt4 = 0x84,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kLong4 = 0x8b,
  kBinBytes = 'B',
  kShortBinBytes = 'C',
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kBinBytes8 = 0x8e,
  kEmptySet = 0x8f,
  kAddItems = 0x90,
  kFrozenSet = 0x91,
  kNewObjEx = 0x92,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
  kByteArray8 = 0x96,
  kNextBuffer = 0x97,
  kReadOnlyBuffer = 0x98,
};

// Names of opcodes this reader refuses, for error messages.
const char* RefusedOpName(uint8_t op) {
  switch (op) {
    case kFloatText: return "FLOAT";
    case kStringText: return "STRING";
    case kUnicodeText: return "UNICODE";
    case kPersIdText: return "PERSID";
    case kInst: return "INST";
    case kObj: return "OBJ";
    case kExt1: return "EXT1";
    case kExt2: return "EXT2";
    case kExt4: return "EXT4";
    case kEmptySet: return "EMPTY_SET";
    case kAddItems: return "ADDITEMS";
    case kFrozenSet: return "FROZENSET";
    case kNewObjEx: return "NEWOBJ_EX";
    case kByteArray8: return "BYTEARRAY8";
    case kNextBuffer: return "NEXT_BUFFER";
    case kReadOnlyBuffer: return "READONLY_BUFFER";
    default: return nullptr;
  }
}

struct StorageClass {
  const char* name;
  DType dtype;
};
constexpr StorageClass kStorageClasses[] = {
    {"FloatStorage", DType::kFloat32},
    {"DoubleStorage", DType::kFloat64},
    {"HalfStorage", DType::kFloat16},
    {"BFloat16Storage", DType::kBFloat16},
    {"CharStorage", DType::kInt8},
    {"ShortStorage", DType::kInt16},
    {"IntStorage", DType::kInt32},
    {"LongStorage", DType::kInt64},
    {"ByteStorage", DType::kUInt8},
    {"BoolStorage", DType::kBool},
    {"ComplexFloatStorage", DType::kComplex64},
    {"ComplexDoubleStorage", DType::kComplex128},
};

const char* KindName(PyKind kind) {
  switch (kind) {
    case PyKind::kNone: return "None";
    case PyKind::kBool: return "bool";
    case PyKind::kInt:
    case PyKind::kBigInt: return "int";
    case PyKind::kFloat: return "float";
    case PyKind::kStr: return "str";
    case PyKind::kBytes: return "bytes";
    case PyKind::kList: return "list";
    case PyKind::kTuple: return "tuple";
    case PyKind::kDict: return "dict";
    case PyKind::kGlobal: return "global";
    case PyKind::kStorage: return "storage";
    case PyKind::kTensor: return "tensor";
  }
  return "?";
}

// Keys of a dict being built, so that SETITEM on an existing key replaces
// its value in place (Python semantics) without a quadratic scan.
struct DictIndex {
  absl::flat_hash_map<std::string, size_t> str;
  absl::flat_hash_map<int64_t, size_t> ints;
};

class Unpickler {
 public:
  Unpickler(absl::string_view data, const PickleOptions& options, PickleValue* value)
      : data_(data), options_(options), value_(value) {
    none_ = Arena(PyKind::kNone);
    true_ = Arena(PyKind::kBool);
    true_->b = true;
    false_ = Arena(PyKind::kBool);
  }

  absl::Status Run() {
    while (true) {
      op_pos_ = pos_;
      if (pos_ >= data_.size()) return Error("truncated pickle: no STOP opcode");
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      if (op == kStop) {
        if (stack_.empty()) return Error("STOP with an empty stack");
        value_->root = stack_.back();
        return absl::OkStatus();
      }
      CKPT_RETURN_IF_ERROR(Step(op));
    }
  }

 private:
  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat("pickle offset ", op_pos_, ": ", message));
  }

  PyObject* Arena(PyKind kind) {
    value_->objects.emplace_back();
    value_->objects.back().kind = kind;
    return &value_->objects.back();
  }
  absl::StatusOr<PyObject*> New(PyKind kind) {
    if (++created_ > options_.max_objects) {
      return Error(absl::StrCat("more than ", options_.max_objects, " objects"));
    }
    return Arena(kind);
  }

  // ---- input
  absl::Status Need(uint64_t n) const {
    if (n > data_.size() - pos_) {
      return Error(absl::StrCat("truncated pickle: ", n, " bytes needed, ",
                                data_.size() - pos_, " left"));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> ReadLE(int n) {
    CKPT_RETURN_IF_ERROR(Need(n));
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t{static_cast<uint8_t>(data_[pos_ + i])} << (8 * i);
    pos_ += n;
    return v;
  }
  absl::StatusOr<absl::string_view> ReadBytes(uint64_t n) {
    CKPT_RETURN_IF_ERROR(Need(n));
    absl::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  // A text line without its '\n' (text opcodes, GLOBAL).
  absl::StatusOr<absl::string_view> ReadLine() {
    const size_t end = data_.find('\n', pos_);
    if (end == absl::string_view::npos) return Error("truncated pickle: unterminated line");
    absl::string_view s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }

  // ---- stack
  size_t Fence() const { return marks_.empty() ? 0 : marks_.back(); }
  absl::StatusOr<PyObject*> Pop() {
    if (stack_.size() <= Fence()) return Error("stack underflow");
    PyObject* top = stack_.back();
    stack_.pop_back();
    return top;
  }
  absl::StatusOr<PyObject*> Top() {
    if (stack_.size() <= Fence()) return Error("stack underflow");
    return stack_.back();
  }
  absl::StatusOr<std::vector<PyObject*>> PopMark() {
    if (marks_.empty()) return Error("no MARK on the stack");
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<PyObject*> items(stack_.begin() + mark, stack_.end());
    stack_.resize(mark);
    return items;
  }
  absl::StatusOr<PyObject*> MakeInt(int64_t v) {
    CKPT_ASSIGN_OR_RETURN(PyObject * o, New(PyKind::kInt));
    o->i = v;
    return o;
  }
  absl::Status PushStr(absl::string_view s, PyKind kind) {
    if (kind == PyKind::kStr && !IsValidUtf8(s)) return Error("string is not valid UTF-8");
    CKPT_ASSIGN_OR_RETURN(PyObject * o, New(kind));
    o->s.assign(s.data(), s.size());
    stack_.push_back(o);
    return absl::OkStatus();
  }
  absl::StatusOr<PyObject*> MakeSeq(PyKind kind, std::vector<PyObject*> items) {
    CKPT_ASSIGN_OR_RETURN(PyObject * o, New(kind));
    o->items = std::move(items);
    return o;
  }
  // Little-endian two's complement (LONG1, LONG4).
  absl::StatusOr<PyObject*> MakeLong(absl::string_view bytes) {
    if (bytes.empty()) return MakeInt(0);
    const bool negative = static_cast<uint8_t>(bytes.back()) & 0x80;
    const uint8_t fill = negative ? 0xff : 0x00;
    for (size_t i = 8; i < bytes.size(); ++i) {
      if (static_cast<uint8_t>(bytes[i]) != fill) return New(PyKind::kBigInt);
    }
    uint64_t v = negative ? ~uint64_t{0} : 0;
    for (size_t i = 0; i < bytes.size() && i < 8; ++i) {
      v &= ~(uint64_t{0xff} << (8 * i));
      v |= uint64_t{static_cast<uint8_t>(bytes[i])} << (8 * i);
    }
    // With more than 8 bytes, the sign of the 8th byte must match the fill.
    if (bytes.size() > 8 && ((v >> 63) != 0) != negative) return New(PyKind::kBigInt);
    return MakeInt(static_cast<int64_t>(v));
  }

  // ---- dict
  absl::Status SetItem(PyObject* dict, PyObject* key, PyObject* value) {
    if (dict->kind != PyKind::kDict) {
      return Error(absl::StrCat("SETITEM on a ", KindName(dict->kind), ", not a dict"));
    }
    DictIndex& index = indexes_[dict];
    size_t* slot = nullptr;
    if (key->kind == PyKind::kStr) {
      auto [it, inserted] = index.str.try_emplace(key->s, dict->entries.size());
      if (!inserted) slot = &it->second;
    } else if (key->kind == PyKind::kInt || key->kind == PyKind::kBool) {
      const int64_t k = key->kind == PyKind::kInt ? key->i : key->b;
      auto [it, inserted] = index.ints.try_emplace(k, dict->entries.size());
      if (!inserted) slot = &it->second;
    }
    if (slot != nullptr) {
      dict->entries[*slot].second = value;
    } else {
      dict->entries.emplace_back(key, value);
    }
    return absl::OkStatus();
  }

  // ---- globals
  absl::StatusOr<PyObject*> Global(absl::string_view module, absl::string_view name) {
    const std::string full = absl::StrCat(module, ".", name);
    PyGlobal g = PyGlobal::kNone;
    DType dtype = DType::kUnspecified;
    bool untyped = false;
    if (module == "collections" && name == "OrderedDict") {
      g = PyGlobal::kOrderedDict;
    } else if (module == "torch._utils") {
      if (name == "_rebuild_tensor") g = PyGlobal::kRebuildTensor;
      if (name == "_rebuild_tensor_v2") g = PyGlobal::kRebuildTensorV2;
      if (name == "_rebuild_tensor_v3") g = PyGlobal::kRebuildTensorV3;
      if (name == "_rebuild_parameter") g = PyGlobal::kRebuildParameter;
      if (name == "_rebuild_parameter_with_state") g = PyGlobal::kRebuildParameterWithState;
    } else if (module == "torch" || module == "torch.storage") {
      if (name == "UntypedStorage") {
        g = PyGlobal::kStorageType;
        dtype = DType::kUInt8;
        untyped = true;
      } else if (module == "torch") {
        for (const StorageClass& c : kStorageClasses) {
          if (name == c.name) {
            g = PyGlobal::kStorageType;
            dtype = c.dtype;
          }
        }
        if (name == "Size") g = PyGlobal::kSize;
        if (g == PyGlobal::kNone && !name.empty() && !absl::ascii_isupper(name[0])) {
          auto parsed = ParseDType(name);
          if (parsed.ok()) {
            g = PyGlobal::kDType;
            dtype = *parsed;
          }
        }
      }
    } else if (module == "_codecs" && name == "encode") {
      g = PyGlobal::kCodecsEncode;
    } else if ((module == "builtins" || module == "__builtin__") && name == "bytes") {
      g = PyGlobal::kBytes;  // protocol 2 pickles b"" as bytes()
    }
    if (g == PyGlobal::kNone) {
      return Error(absl::StrCat("unsupported global '", Printable(full),
                                "': this reader loads tensors, containers and scalars "
                                "only and never runs code from the file"));
    }
    CKPT_ASSIGN_OR_RETURN(PyObject * o, New(PyKind::kGlobal));
    o->global = g;
    o->dtype = dtype;
    o->untyped = untyped;
    o->s = full;
    return o;
  }

  static std::string Printable(absl::string_view s) {
    std::string out;
    for (char c : s.substr(0, 200)) {
      if (c >= 0x20 && c < 0x7f) {
        out.push_back(c);
      } else {
        absl::StrAppendFormat(&out, "\\x%02x", static_cast<uint8_t>(c));
      }
    }
    if (s.size() > 200) out += "...";
    return out;
  }

  // ---- REDUCE of an allowed global
  absl::StatusOr<std::vector<int64_t>> IntTuple(const PyObject* o, const char* what) {
    if (o->kind != PyKind::kTuple && o->kind != PyKind::kList) {
      return Error(absl::StrCat(what, " must be a tuple of ints, not ", KindName(o->kind)));
    }
    if (o->items.size() > kMaxDims) {
      return Error(absl::StrCat(what, " has ", o->items.size(), " dimensions (max ", kMaxDims,
                                ")"));
    }
    std::vector<int64_t> v;
    for (const PyObject* item : o->items) {
      if (item->kind != PyKind::kInt || item->i < 0) {
        return Error(absl::StrCat(what, " must hold non-negative ints"));
      }
      v.push_back(item->i);
    }
    return v;
  }

  static bool IsEmptyDictOrNone(const PyObject* o) {
    return o->kind == PyKind::kNone || (o->kind == PyKind::kDict && o->entries.empty());
  }

  absl::StatusOr<PyObject*> RebuildTensor(const PyObject* fn, const std::vector<PyObject*>& a) {
    const PyGlobal g = fn->global;
    size_t min_args = 4, max_args = 4;
    if (g == PyGlobal::kRebuildTensorV2) min_args = 6, max_args = 7;
    if (g == PyGlobal::kRebuildTensorV3) min_args = 7, max_args = 8;
    if (a.size() < min_args || a.size() > max_args) {
      return Error(absl::StrCat(fn->s, " takes ", min_args, " arguments, got ", a.size()));
    }
    if (a[0]->kind != PyKind::kStorage) {
      return Error(absl::StrCat(fn->s, ": argument 1 must be a storage, not ",
                                KindName(a[0]->kind)));
    }
    if (a[1]->kind != PyKind::kInt || a[1]->i < 0) {
      return Error(absl::StrCat(fn->s, ": storage offset must be a non-negative int"));
    }
    CKPT_ASSIGN_OR_RETURN(PyObject * t, New(PyKind::kTensor));
    t->tensor.storage = a[0]->storage;
    t->tensor.dtype = a[0]->storage->dtype;
    t->tensor.offset = static_cast<uint64_t>(a[1]->i);
    CKPT_ASSIGN_OR_RETURN(t->tensor.shape, IntTuple(a[2], "tensor size"));
    CKPT_ASSIGN_OR_RETURN(t->tensor.stride, IntTuple(a[3], "tensor stride"));
    if (t->tensor.shape.size() != t->tensor.stride.size()) {
      return Error(absl::StrCat("tensor size has ", t->tensor.shape.size(),
                                " dimensions but stride has ", t->tensor.stride.size()));
    }
    if (g == PyGlobal::kRebuildTensor) return t;
    if (a[4]->kind != PyKind::kBool) return Error("requires_grad must be a bool");
    t->tensor.requires_grad = a[4]->b;
    if (a[5]->kind != PyKind::kDict || !a[5]->entries.empty()) {
      return Error("tensor backward hooks are not supported");
    }
    size_t next = 6;
    if (g == PyGlobal::kRebuildTensorV3) {
      if (a[6]->kind != PyKind::kGlobal || a[6]->global != PyGlobal::kDType) {
        return Error("_rebuild_tensor_v3: argument 7 must be a torch dtype");
      }
      t->tensor.dtype = a[6]->dtype;
      next = 7;
    } else if (a[0]->storage->untyped) {
      return Error(absl::StrCat(fn->s, " needs a typed storage"));
    }
    if (a.size() > next && !IsEmptyDictOrNone(a[next])) {
      return Error("tensor metadata is not supported");
    }
    return t;
  }

  absl::StatusOr<PyObject*> Call(const PyObject* fn, const PyObject* args_tuple) {
    if (fn->kind != PyKind::kGlobal) {
      return Error(absl::StrCat("REDUCE on a ", KindName(fn->kind), ", not a callable"));
    }
    if (args_tuple->kind != PyKind::kTuple) {
      return Error(absl::StrCat("REDUCE arguments must be a tuple, not ",
                                KindName(args_tuple->kind)));
    }
    const std::vector<PyObject*>& a = args_tuple->items;
    switch (fn->global) {
      case PyGlobal::kOrderedDict: {
        if (!a.empty()) return Error("OrderedDict() with arguments is not supported");
        CKPT_ASSIGN_OR_RETURN(PyObject * d, New(PyKind::kDict));
        d->ordered = true;
        return d;
      }
      case PyGlobal::kRebuildTensor:
      case PyGlobal::kRebuildTensorV2:
      case PyGlobal::kRebuildTensorV3:
        return RebuildTensor(fn, a);
      case PyGlobal::kRebuildParameter:
      case PyGlobal::kRebuildParameterWithState: {
        const size_t n = fn->global == PyGlobal::kRebuildParameter ? 3 : 4;
        if (a.size() != n) return Error(absl::StrCat(fn->s, " takes ", n, " arguments"));
        if (a[0]->kind != PyKind::kTensor) return Error("parameter data must be a tensor");
        if (a[1]->kind != PyKind::kBool) return Error("requires_grad must be a bool");
        if (a[2]->kind != PyKind::kDict || !a[2]->entries.empty()) {
          return Error("parameter backward hooks are not supported");
        }
        if (n == 4 && !IsEmptyDictOrNone(a[3]) &&
            !(a[3]->kind == PyKind::kTuple && a[3]->items.size() <= 2 &&
              [&] {
                for (const PyObject* s : a[3]->items) {
                  if (!IsEmptyDictOrNone(s)) return false;
                }
                return true;
              }())) {
          return Error("a Parameter with Python attributes is not supported");
        }
        CKPT_ASSIGN_OR_RETURN(PyObject * t, New(PyKind::kTensor));
        t->tensor = a[0]->tensor;
        t->tensor.requires_grad = a[1]->b;
        return t;
      }
      case PyGlobal::kSize: {
        if (a.size() != 1) return Error("torch.Size takes 1 argument");
        CKPT_RETURN_IF_ERROR(IntTuple(a[0], "torch.Size").status());
        return MakeSeq(PyKind::kTuple, a[0]->items);
      }
      case PyGlobal::kCodecsEncode: {
        if (a.size() != 2 || a[0]->kind != PyKind::kStr || a[1]->kind != PyKind::kStr) {
          return Error("_codecs.encode takes (str, encoding)");
        }
        if (a[1]->s != "latin1" && a[1]->s != "latin-1") {
          return Error(absl::StrCat("_codecs.encode: unsupported encoding '",
                                    Printable(a[1]->s), "'"));
        }
        CKPT_ASSIGN_OR_RETURN(PyObject * b, New(PyKind::kBytes));
        // UTF-8 (already validated) to code points, each of which must be < 256.
        const std::string& s = a[0]->s;
        b->s.reserve(s.size());
        for (size_t i = 0; i < s.size(); ++i) {
          const uint8_t c = static_cast<uint8_t>(s[i]);
          if (c < 0x80) {
            b->s.push_back(static_cast<char>(c));
          } else if ((c == 0xc2 || c == 0xc3) && i + 1 < s.size()) {
            b->s.push_back(static_cast<char>(((c & 0x03) << 6) |
                                             (static_cast<uint8_t>(s[i + 1]) & 0x3f)));
            ++i;
          } else {
            return Error("_codecs.encode: character outside latin-1");
          }
        }
        return b;
      }
      case PyGlobal::kBytes:
        if (!a.empty()) return Error("bytes() with arguments is not supported");
        return New(PyKind::kBytes);
      case PyGlobal::kStorageType:
      case PyGlobal::kDType:
        return Error(absl::StrCat("calling ", fn->s, " is not supported"));
      case PyGlobal::kNone:
        break;
    }
    return Error("unknown callable");
  }

  absl::Status PersistentLoad(PyObject* pid) {
    if (pid->kind != PyKind::kTuple || pid->items.size() != 5 ||
        pid->items[0]->kind != PyKind::kStr || pid->items[0]->s != "storage") {
      return Error("persistent id must be ('storage', type, key, location, numel)");
    }
    const PyObject* type = pid->items[1];
    const PyObject* key = pid->items[2];
    const PyObject* location = pid->items[3];
    const PyObject* numel = pid->items[4];
    if (type->kind != PyKind::kGlobal || type->global != PyGlobal::kStorageType) {
      return Error("persistent id: the storage type must be a torch storage class");
    }
    if (key->kind != PyKind::kStr || key->s.empty() || key->s.size() > 256) {
      return Error("persistent id: the storage key must be a short string");
    }
    if (location->kind != PyKind::kStr || location->s.empty() || location->s.size() > 64) {
      return Error("persistent id: the location must be a device string");
    }
    if (numel->kind != PyKind::kInt || numel->i < 0) {
      return Error("persistent id: numel must be a non-negative int");
    }
    StorageRef*& ref = storages_[key->s];
    if (ref == nullptr) {
      value_->storages.emplace_back();
      ref = &value_->storages.back();
      ref->key = key->s;
      ref->location = location->s;
      ref->dtype = type->dtype;
      ref->untyped = type->untyped;
      ref->numel = static_cast<uint64_t>(numel->i);
    } else if (ref->dtype != type->dtype || ref->untyped != type->untyped ||
               ref->numel != static_cast<uint64_t>(numel->i) || ref->location != location->s) {
      return Error(absl::StrCat("storage '", Printable(key->s),
                                "' is declared twice with different types or sizes"));
    }
    CKPT_ASSIGN_OR_RETURN(PyObject * o, New(PyKind::kStorage));
    o->storage = ref;
    stack_.push_back(o);
    return absl::OkStatus();
  }

  absl::Status Memo(uint64_t index) {
    CKPT_ASSIGN_OR_RETURN(PyObject * top, Top());
    if (memo_.size() > options_.max_objects) return Error("memo too large");
    memo_[index] = top;
    return absl::OkStatus();
  }
  absl::Status Get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Error(absl::StrCat("memo key ", index, " missing"));
    stack_.push_back(it->second);
    return absl::OkStatus();
  }

  absl::Status Step(uint8_t op) {
    switch (op) {
      case kProto: {
        CKPT_ASSIGN_OR_RETURN(uint64_t proto, ReadLE(1));
        if (proto > 5) return Error(absl::StrCat("unsupported pickle protocol ", proto));
        return absl::OkStatus();
      }
      case kFrame: {
        CKPT_ASSIGN_OR_RETURN(uint64_t n, ReadLE(8));
        return Need(n);  // frames only group opcodes; read on through them
      }
      case kMark:
        marks_.push_back(stack_.size());
        return absl::OkStatus();
      case kPop:
        if (!marks_.empty() && marks_.back() == stack_.size()) {
          marks_.pop_back();
          return absl::OkStatus();
        }
        return Pop().status();
      case kPopMark:
        return PopMark().status();
      case kDup: {
        CKPT_ASSIGN_OR_RETURN(PyObject * top, Top());
        stack_.push_back(top);
        return absl::OkStatus();
      }
      case kNone:
        stack_.push_back(none_);
        return absl::OkStatus();
      case kNewTrue:
        stack_.push_back(true_);
        return absl::OkStatus();
      case kNewFalse:
        stack_.push_back(false_);
        return absl::OkStatus();
      case kBinInt: {
        CKPT_ASSIGN_OR_RETURN(uint64_t v, ReadLE(4));
        CKPT_ASSIGN_OR_RETURN(PyObject * o, MakeInt(static_cast<int32_t>(v)));
        stack_.push_back(o);
        return absl::OkStatus();
      }
      case kBinInt1:
      case kBinInt2: {
        CKPT_ASSIGN_OR_RETURN(uint64_t v, ReadLE(op == kBinInt1 ? 1 : 2));
        CKPT_ASSIGN_OR_RETURN(PyObject * o, MakeInt(static_cast<int64_t>(v)));
        stack_.push_back(o);
        return absl::OkStatus();
      }
      case kLong1:
      case kLong4: {
        CKPT_ASSIGN_OR_RETURN(uint64_t n, ReadLE(op == kLong1 ? 1 : 4));
        if (op == kLong4 && static_cast<int32_t>(n) < 0) return Error("LONG4 negative length");
        CKPT_ASSIGN_OR_RETURN(absl::string_view bytes, ReadBytes(n));
        CKPT_ASSIGN_OR_RETURN(PyObject * o, MakeLong(bytes));
        stack_.push_back(o);
        return absl::OkStatus();
      }
      case kIntText:
      case kLongText: {
        CKPT_ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        if (op == kIntText && (line == "00" || line == "01")) {
          stack_.push_back(line == "01" ? true_ : false_);
          return absl::OkStatus();
        }
        if (op == kLongText && !line.empty() && line.back() == 'L') line.remove_suffix(1);
        int64_t v;
        if (!absl::SimpleAtoi(line, &v)) return Error("bad or out-of-range integer text");
        CKPT_ASSIGN_OR_RETURN(PyObject * o, MakeInt(v));
        stack_.push_back(o);
        return absl::OkStatus();
      }
      case kBinFloat: {
        CKPT_RETURN_IF_ERROR(Need(8));
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<uint8_t>(data_[pos_ + i]);
        pos_ += 8;
        CKPT_ASSIGN_OR_RETURN(PyObject * o, New(PyKind::kFloat));
        std::memcpy(&o->f, &bits, 8);
        stack_.push_back(o);
        return absl::OkStatus();
      }
      case kBinUnicode:
      case kShortBinUnicode:
      case kBinUnicode8:
      case kBinString:
      case kShortBinString:
      case kBinBytes:
      case kShortBinBytes:
      case kBinBytes8: {
        const int width = (op == kShortBinUnicode || op == kShortBinString ||
                           op == kShortBinBytes)
                              ? 1
                              : (op == kBinUnicode8 || op == kBinBytes8) ? 8 : 4;
        CKPT_ASSIGN_OR_RETURN(uint64_t n, ReadLE(width));
        if (op == kBinString && static_cast<int32_t>(n) < 0) return Error("negative length");
        CKPT_ASSIGN_OR_RETURN(absl::string_view s, ReadBytes(n));
        const bool bytes = op == kBinBytes || op == kShortBinBytes || op == kBinBytes8;
        return PushStr(s, bytes ? PyKind::kBytes : PyKind::kStr);
      }
      case kEmptyList: {
        CKPT_ASSIGN_OR_RETURN(PyObject * o, New(PyKind::kList));
        stack_.push_back(o);
        return absl::OkStatus();
      }
      case kEmptyTuple: {
        CKPT_ASSIGN_OR_RETURN(PyObject * o, New(PyKind::kTuple));
        stack_.push_back(o);
        return absl::OkStatus();
      }
      case kEmptyDict: {
        CKPT_ASSIGN_OR_RETURN(PyObject * o, New(PyKind::kDict));
        stack_.push_back(o);
        return absl::OkStatus();
      }
      case kList:
      case kTuple: {
        CKPT_ASSIGN_OR_RETURN(std::vector<PyObject*> items, PopMark());
        CKPT_ASSIGN_OR_RETURN(PyObject * o,
                              MakeSeq(op == kList ? PyKind::kList : PyKind::kTuple,
                                      std::move(items)));
        stack_.push_back(o);
        return absl::OkStatus();
      }
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        const size_t n = op - kTuple1 + 1;
        if (stack_.size() < Fence() + n) return Error("stack underflow");
        std::vector<PyObject*> items(stack_.end() - n, stack_.end());
        stack_.resize(stack_.size() - n);
        CKPT_ASSIGN_OR_RETURN(PyObject * o, MakeSeq(PyKind::kTuple, std::move(items)));
        stack_.push_back(o);
        return absl::OkStatus();
      }
      case kDict: {
        CKPT_ASSIGN_OR_RETURN(std::vector<PyObject*> items, PopMark());
        if (items.size() % 2 != 0) return Error("DICT with an odd number of items");
        CKPT_ASSIGN_OR_RETURN(PyObject * d, New(PyKind::kDict));
        for (size_t i = 0; i < items.size(); i += 2) {
          CKPT_RETURN_IF_ERROR(SetItem(d, items[i], items[i + 1]));
        }
        stack_.push_back(d);
        return absl::OkStatus();
      }
      case kAppend: {
        CKPT_ASSIGN_OR_RETURN(PyObject * v, Pop());
        CKPT_ASSIGN_OR_RETURN(PyObject * list, Top());
        if (list->kind != PyKind::kList) {
          return Error(absl::StrCat("APPEND to a ", KindName(list->kind), ", not a list"));
        }
        list->items.push_back(v);
        return absl::OkStatus();
      }
      case kAppends: {
        CKPT_ASSIGN_OR_RETURN(std::vector<PyObject*> items, PopMark());
        CKPT_ASSIGN_OR_RETURN(PyObject * list, Top());
        if (list->kind != PyKind::kList) {
          return Error(absl::StrCat("APPENDS to a ", KindName(list->kind), ", not a list"));
        }
        list->items.insert(list->items.end(), items.begin(), items.end());
        return absl::OkStatus();
      }
      case kSetItem: {
        CKPT_ASSIGN_OR_RETURN(PyObject * v, Pop());
        CKPT_ASSIGN_OR_RETURN(PyObject * k, Pop());
        CKPT_ASSIGN_OR_RETURN(PyObject * d, Top());
        return SetItem(d, k, v);
      }
      case kSetItems: {
        CKPT_ASSIGN_OR_RETURN(std::vector<PyObject*> items, PopMark());
        if (items.size() % 2 != 0) return Error("SETITEMS with an odd number of items");
        CKPT_ASSIGN_OR_RETURN(PyObject * d, Top());
        for (size_t i = 0; i < items.size(); i += 2) {
          CKPT_RETURN_IF_ERROR(SetItem(d, items[i], items[i + 1]));
        }
        return absl::OkStatus();
      }
      case kGlobal: {
        CKPT_ASSIGN_OR_RETURN(absl::string_view module, ReadLine());
        CKPT_ASSIGN_OR_RETURN(absl::string_view name, ReadLine());
        CKPT_ASSIGN_OR_RETURN(PyObject * g, Global(module, name));
        stack_.push_back(g);
        return absl::OkStatus();
      }
      case kStackGlobal: {
        CKPT_ASSIGN_OR_RETURN(PyObject * name, Pop());
        CKPT_ASSIGN_OR_RETURN(PyObject * module, Pop());
        if (name->kind != PyKind::kStr || module->kind != PyKind::kStr) {
          return Error("STACK_GLOBAL needs two strings");
        }
        CKPT_ASSIGN_OR_RETURN(PyObject * g, Global(module->s, name->s));
        stack_.push_back(g);
        return absl::OkStatus();
      }
      case kReduce: {
        CKPT_ASSIGN_OR_RETURN(PyObject * args, Pop());
        CKPT_ASSIGN_OR_RETURN(PyObject * fn, Pop());
        CKPT_ASSIGN_OR_RETURN(PyObject * result, Call(fn, args));
        stack_.push_back(result);
        return absl::OkStatus();
      }
      case kNewObj: {
        CKPT_ASSIGN_OR_RETURN(PyObject * args, Pop());
        CKPT_ASSIGN_OR_RETURN(PyObject * cls, Pop());
        if (cls->kind != PyKind::kGlobal || cls->global != PyGlobal::kOrderedDict) {
          return Error("NEWOBJ is only supported for collections.OrderedDict");
        }
        CKPT_ASSIGN_OR_RETURN(PyObject * result, Call(cls, args));
        stack_.push_back(result);
        return absl::OkStatus();
      }
      case kBuild: {
        CKPT_ASSIGN_OR_RETURN(PyObject * state, Pop());
        CKPT_ASSIGN_OR_RETURN(PyObject * obj, Top());
        // An OrderedDict's instance attributes (a state_dict's `_metadata`):
        // not part of the value; dropped.
        if (obj->kind == PyKind::kDict &&
            (state->kind == PyKind::kDict || state->kind == PyKind::kNone ||
             (state->kind == PyKind::kTuple && state->items.size() == 2))) {
          return absl::OkStatus();
        }
        return Error(absl::StrCat("BUILD on a ", KindName(obj->kind), " is not supported"));
      }
      case kBinPersId: {
        CKPT_ASSIGN_OR_RETURN(PyObject * pid, Pop());
        return PersistentLoad(pid);
      }
      case kBinPut: {
        CKPT_ASSIGN_OR_RETURN(uint64_t i, ReadLE(1));
        return Memo(i);
      }
      case kLongBinPut: {
        CKPT_ASSIGN_OR_RETURN(uint64_t i, ReadLE(4));
        return Memo(i);
      }
      case kMemoize:
        return Memo(memo_.size());
      case kPut:
      case kGet: {
        CKPT_ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        uint64_t i;
        if (!absl::SimpleAtoi(line, &i)) return Error("bad memo index");
        return op == kPut ? Memo(i) : Get(i);
      }
      case kBinGet: {
        CKPT_ASSIGN_OR_RETURN(uint64_t i, ReadLE(1));
        return Get(i);
      }
      case kLongBinGet: {
        CKPT_ASSIGN_OR_RETURN(uint64_t i, ReadLE(4));
        return Get(i);
      }
      default:
        break;
    }
    if (const char* name = RefusedOpName(op)) {
      return Error(absl::StrCat("pickle opcode ", name, " is not supported"));
    }
    return Error(absl::StrFormat("unknown pickle opcode 0x%02x", op));
  }

  absl::string_view data_;
  const PickleOptions& options_;
  PickleValue* value_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  uint64_t created_ = 0;
  PyObject* none_;
  PyObject* true_;
  PyObject* false_;
  std::vector<PyObject*> stack_;
  std::vector<size_t> marks_;
  absl::flat_hash_map<uint64_t, PyObject*> memo_;
  absl::flat_hash_map<const PyObject*, DictIndex> indexes_;
  absl::flat_hash_map<std::string, StorageRef*> storages_;
};

// ------------------------------------------------------------ to tree

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
          return Error(absl::StrCat("string of ", obj->s.size(), " bytes (max ",
                                          kMaxInlineString, ")"));
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
    return absl::InvalidArgumentError(
        absl::StrCat("value ", path.empty() ? "<root>" : absl::StrCat("'", path, "'"), ": ",
                     message));
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
                                      ") reaches past the end of its storage of ",
                                      storage_elems, " elements"));
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

void AppendLE(std::string* out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

absl::StatusOr<PickleValue> ParsePickle(absl::string_view data, const PickleOptions& options) {
  PickleValue value;
  Unpickler unpickler(data, options, &value);
  CKPT_RETURN_IF_ERROR(unpickler.Run());
  return value;
}

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

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < static_cast<size_t>(len)) return false;
    for (int k = 1; k < len; ++k) {
      const uint8_t cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += len;
  }
  return true;
}

absl::string_view StorageClassName(DType dtype) {
  for (const StorageClass& c : kStorageClasses) {
    if (c.dtype == dtype) return c.name;
  }
  return "";
}

// ------------------------------------------------------------ encoder

void PickleEncoder::Proto() {
  out_->push_back(static_cast<char>(kProto));
  out_->push_back(2);
}
void PickleEncoder::Stop() { out_->push_back(kStop); }
void PickleEncoder::Mark() { out_->push_back(kMark); }
void PickleEncoder::None() { out_->push_back(kNone); }
void PickleEncoder::Bool(bool v) { out_->push_back(static_cast<char>(v ? kNewTrue : kNewFalse)); }

void PickleEncoder::Int(int64_t v) {
  if (v >= 0 && v < 256) {
    out_->push_back(kBinInt1);
    AppendLE(out_, static_cast<uint64_t>(v), 1);
  } else if (v >= 0 && v < 65536) {
    out_->push_back(kBinInt2);
    AppendLE(out_, static_cast<uint64_t>(v), 2);
  } else if (v >= std::numeric_limits<int32_t>::min() &&
             v <= std::numeric_limits<int32_t>::max()) {
    out_->push_back(kBinInt);
    AppendLE(out_, static_cast<uint32_t>(static_cast<int32_t>(v)), 4);
  } else {
    // Smallest little-endian two's complement that keeps the sign.
    int n = 8;
    const uint64_t u = static_cast<uint64_t>(v);
    while (n > 1) {
      const uint8_t top = (u >> (8 * (n - 1))) & 0xff;
      const uint8_t next_sign = (u >> (8 * (n - 2) + 7)) & 1;
      if ((top == 0x00 && next_sign == 0) || (top == 0xff && next_sign == 1)) {
        --n;
      } else {
        break;
      }
    }
    out_->push_back(static_cast<char>(kLong1));
    out_->push_back(static_cast<char>(n));
    AppendLE(out_, u, n);
  }
}

void PickleEncoder::Float(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  out_->push_back(kBinFloat);
  for (int i = 7; i >= 0; --i) out_->push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
}

void PickleEncoder::Str(absl::string_view utf8) {
  out_->push_back(kBinUnicode);
  AppendLE(out_, utf8.size(), 4);
  out_->append(utf8.data(), utf8.size());
}

void PickleEncoder::Global(absl::string_view module, absl::string_view name) {
  const std::string full = absl::StrCat(module, "\n", name, "\n");
  for (const auto& [g, memo] : globals_) {
    if (g == full) {
      if (memo < 256) {
        out_->push_back(kBinGet);
        AppendLE(out_, memo, 1);
      } else {
        out_->push_back(kLongBinGet);
        AppendLE(out_, memo, 4);
      }
      return;
    }
  }
  out_->push_back(kGlobal);
  out_->append(full);
  const uint32_t memo = next_memo_++;
  if (memo < 256) {
    out_->push_back(kBinPut);
    AppendLE(out_, memo, 1);
  } else {
    out_->push_back(kLongBinPut);
    AppendLE(out_, memo, 4);
  }
  globals_.emplace_back(full, memo);
}

void PickleEncoder::EmptyTuple() { out_->push_back(kEmptyTuple); }
void PickleEncoder::Tuple(size_t n) {
  if (n == 0) {
    out_->push_back(kEmptyTuple);
  } else if (n <= 3) {
    out_->push_back(static_cast<char>(kTuple1 + n - 1));
  } else {
    out_->push_back(kTuple);
  }
}
void PickleEncoder::Reduce() { out_->push_back(kReduce); }
void PickleEncoder::EmptyDict() { out_->push_back(kEmptyDict); }
void PickleEncoder::SetItems() { out_->push_back(kSetItems); }
void PickleEncoder::EmptyList() { out_->push_back(kEmptyList); }
void PickleEncoder::Appends() { out_->push_back(kAppends); }
void PickleEncoder::BinPersId() { out_->push_back(kBinPersId); }

void PickleEncoder::IntTuple(absl::Span<const int64_t> values) {
  if (values.size() > 3) Mark();
  for (int64_t v : values) Int(v);
  Tuple(values.size());
}

}  // namespace ckpt::interop
