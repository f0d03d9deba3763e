// What the unpickler builds from the globals torch.save emits: the allowed
// globals themselves, REDUCE of them (tensors, parameters, OrderedDict,
// bytes) and the storages of persistent ids. Nothing is imported or called.

#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "interop/pickle.h"
#include "interop/pickle_format.h"
#include "interop/pickle_unpickler.h"

namespace ckpt::interop::pickle_internal {

absl::StatusOr<PyObject*> Unpickler::Global(absl::string_view module, absl::string_view name) {
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

std::string Unpickler::Printable(absl::string_view s) {
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

absl::StatusOr<std::vector<int64_t>> Unpickler::IntTuple(const PyObject* o, const char* what) {
  if (o->kind != PyKind::kTuple && o->kind != PyKind::kList) {
    return Error(absl::StrCat(what, " must be a tuple of ints, not ", KindName(o->kind)));
  }
  if (o->items.size() > kMaxDims) {
    return Error(absl::StrCat(what, " has ", o->items.size(), " dimensions (max ", kMaxDims, ")"));
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

bool Unpickler::IsEmptyDictOrNone(const PyObject* o) {
  return o->kind == PyKind::kNone || (o->kind == PyKind::kDict && o->entries.empty());
}

absl::StatusOr<PyObject*> Unpickler::RebuildTensor(const PyObject* fn,
                                                   const std::vector<PyObject*>& a) {
  const PyGlobal g = fn->global;
  size_t min_args = 4, max_args = 4;
  if (g == PyGlobal::kRebuildTensorV2) min_args = 6, max_args = 7;
  if (g == PyGlobal::kRebuildTensorV3) min_args = 7, max_args = 8;
  if (a.size() < min_args || a.size() > max_args) {
    return Error(absl::StrCat(fn->s, " takes ", min_args, " arguments, got ", a.size()));
  }
  if (a[0]->kind != PyKind::kStorage) {
    return Error(absl::StrCat(fn->s, ": argument 1 must be a storage, not ", KindName(a[0]->kind)));
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

absl::StatusOr<PyObject*> Unpickler::Call(const PyObject* fn, const PyObject* args_tuple) {
  if (fn->kind != PyKind::kGlobal) {
    return Error(absl::StrCat("REDUCE on a ", KindName(fn->kind), ", not a callable"));
  }
  if (args_tuple->kind != PyKind::kTuple) {
    return Error(
        absl::StrCat("REDUCE arguments must be a tuple, not ", KindName(args_tuple->kind)));
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
          !(a[3]->kind == PyKind::kTuple && a[3]->items.size() <= 2 && [&] {
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
        return Error(
            absl::StrCat("_codecs.encode: unsupported encoding '", Printable(a[1]->s), "'"));
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
          b->s.push_back(
              static_cast<char>(((c & 0x03) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3f)));
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

absl::Status Unpickler::PersistentLoad(PyObject* pid) {
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

}  // namespace ckpt::interop::pickle_internal
