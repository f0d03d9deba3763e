// The unpickler's opcode machine: input, stack, memo and one Step per
// opcode; and the public ParsePickle and IsValidUtf8.

#include "interop/pickle_unpickler.h"

#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "interop/pickle.h"
#include "interop/pickle_format.h"

namespace ckpt::interop {
namespace pickle_internal {

absl::Status Unpickler::Run() {
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

absl::StatusOr<PyObject*> Unpickler::New(PyKind kind) {
  if (++created_ > options_.max_objects) {
    return Error(absl::StrCat("more than ", options_.max_objects, " objects"));
  }
  return Arena(kind);
}

absl::Status Unpickler::Need(uint64_t n) const {
  if (n > data_.size() - pos_) {
    return Error(
        absl::StrCat("truncated pickle: ", n, " bytes needed, ", data_.size() - pos_, " left"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Unpickler::ReadLE(int n) {
  CKPT_RETURN_IF_ERROR(Need(n));
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t{static_cast<uint8_t>(data_[pos_ + i])} << (8 * i);
  pos_ += n;
  return v;
}

absl::StatusOr<absl::string_view> Unpickler::ReadBytes(uint64_t n) {
  CKPT_RETURN_IF_ERROR(Need(n));
  absl::string_view s = data_.substr(pos_, n);
  pos_ += n;
  return s;
}

absl::StatusOr<absl::string_view> Unpickler::ReadLine() {
  const size_t end = data_.find('\n', pos_);
  if (end == absl::string_view::npos) return Error("truncated pickle: unterminated line");
  absl::string_view s = data_.substr(pos_, end - pos_);
  pos_ = end + 1;
  return s;
}

absl::StatusOr<PyObject*> Unpickler::Pop() {
  if (stack_.size() <= Fence()) return Error("stack underflow");
  PyObject* top = stack_.back();
  stack_.pop_back();
  return top;
}

absl::StatusOr<PyObject*> Unpickler::Top() {
  if (stack_.size() <= Fence()) return Error("stack underflow");
  return stack_.back();
}

absl::StatusOr<std::vector<PyObject*>> Unpickler::PopMark() {
  if (marks_.empty()) return Error("no MARK on the stack");
  const size_t mark = marks_.back();
  marks_.pop_back();
  std::vector<PyObject*> items(stack_.begin() + mark, stack_.end());
  stack_.resize(mark);
  return items;
}

absl::StatusOr<PyObject*> Unpickler::MakeInt(int64_t v) {
  CKPT_ASSIGN_OR_RETURN(PyObject * o, New(PyKind::kInt));
  o->i = v;
  return o;
}

absl::Status Unpickler::PushStr(absl::string_view s, PyKind kind) {
  if (kind == PyKind::kStr && !IsValidUtf8(s)) return Error("string is not valid UTF-8");
  CKPT_ASSIGN_OR_RETURN(PyObject * o, New(kind));
  o->s.assign(s.data(), s.size());
  stack_.push_back(o);
  return absl::OkStatus();
}

absl::StatusOr<PyObject*> Unpickler::MakeSeq(PyKind kind, std::vector<PyObject*> items) {
  CKPT_ASSIGN_OR_RETURN(PyObject * o, New(kind));
  o->items = std::move(items);
  return o;
}

absl::StatusOr<PyObject*> Unpickler::MakeLong(absl::string_view bytes) {
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

absl::Status Unpickler::SetItem(PyObject* dict, PyObject* key, PyObject* value) {
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

absl::Status Unpickler::Memo(uint64_t index) {
  CKPT_ASSIGN_OR_RETURN(PyObject * top, Top());
  if (memo_.size() > options_.max_objects) return Error("memo too large");
  memo_[index] = top;
  return absl::OkStatus();
}

absl::Status Unpickler::Get(uint64_t index) {
  auto it = memo_.find(index);
  if (it == memo_.end()) return Error(absl::StrCat("memo key ", index, " missing"));
  stack_.push_back(it->second);
  return absl::OkStatus();
}

absl::Status Unpickler::Step(uint8_t op) {
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
      const int width = (op == kShortBinUnicode || op == kShortBinString || op == kShortBinBytes)
                            ? 1
                        : (op == kBinUnicode8 || op == kBinBytes8) ? 8
                                                                   : 4;
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
      CKPT_ASSIGN_OR_RETURN(
          PyObject * o, MakeSeq(op == kList ? PyKind::kList : PyKind::kTuple, std::move(items)));
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

}  // namespace pickle_internal

using pickle_internal::Unpickler;

absl::StatusOr<PickleValue> ParsePickle(absl::string_view data, const PickleOptions& options) {
  PickleValue value;
  Unpickler unpickler(data, options, &value);
  CKPT_RETURN_IF_ERROR(unpickler.Run());
  return value;
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

}  // namespace ckpt::interop
