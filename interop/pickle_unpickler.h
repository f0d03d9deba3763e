#ifndef CKPT_INTEROP_PICKLE_UNPICKLER_H_
#define CKPT_INTEROP_PICKLE_UNPICKLER_H_

// Internal to the pickle codec: the restricted unpickler behind ParsePickle.
// Its opcode machine (input, stack, memo, Step) is in pickle_unpickler.cc;
// what the allowed globals build (tensors, storages, REDUCE, persistent ids)
// is in pickle_globals.cc.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "interop/pickle.h"

namespace ckpt::interop::pickle_internal {

// Keys of a dict being built, so that SETITEM on an existing key replaces
// its value in place (Python semantics) without a quadratic scan.
struct DictIndex {
  absl::flat_hash_map<std::string, size_t> str;
  absl::flat_hash_map<int64_t, size_t> ints;
};

// Parses one pickle into a PickleValue; Run() once.
class Unpickler {
 public:
  Unpickler(absl::string_view data, const PickleOptions& options, PickleValue* value)
      : data_(data), options_(options), value_(value) {
    none_ = Arena(PyKind::kNone);
    true_ = Arena(PyKind::kBool);
    true_->b = true;
    false_ = Arena(PyKind::kBool);
  }

  absl::Status Run();

 private:
  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat("pickle offset ", op_pos_, ": ", message));
  }

  PyObject* Arena(PyKind kind) {
    value_->objects.emplace_back();
    value_->objects.back().kind = kind;
    return &value_->objects.back();
  }
  absl::StatusOr<PyObject*> New(PyKind kind);

  // ---- input
  absl::Status Need(uint64_t n) const;
  absl::StatusOr<uint64_t> ReadLE(int n);
  absl::StatusOr<absl::string_view> ReadBytes(uint64_t n);
  // A text line without its '\n' (text opcodes, GLOBAL).
  absl::StatusOr<absl::string_view> ReadLine();

  // ---- stack
  size_t Fence() const { return marks_.empty() ? 0 : marks_.back(); }
  absl::StatusOr<PyObject*> Pop();
  absl::StatusOr<PyObject*> Top();
  absl::StatusOr<std::vector<PyObject*>> PopMark();
  absl::StatusOr<PyObject*> MakeInt(int64_t v);
  absl::Status PushStr(absl::string_view s, PyKind kind);
  absl::StatusOr<PyObject*> MakeSeq(PyKind kind, std::vector<PyObject*> items);
  // Little-endian two's complement (LONG1, LONG4).
  absl::StatusOr<PyObject*> MakeLong(absl::string_view bytes);

  // ---- dict
  absl::Status SetItem(PyObject* dict, PyObject* key, PyObject* value);

  // ---- globals
  absl::StatusOr<PyObject*> Global(absl::string_view module, absl::string_view name);

  static std::string Printable(absl::string_view s);

  // ---- REDUCE of an allowed global
  absl::StatusOr<std::vector<int64_t>> IntTuple(const PyObject* o, const char* what);

  static bool IsEmptyDictOrNone(const PyObject* o);

  absl::StatusOr<PyObject*> RebuildTensor(const PyObject* fn, const std::vector<PyObject*>& a);

  absl::StatusOr<PyObject*> Call(const PyObject* fn, const PyObject* args_tuple);

  absl::Status PersistentLoad(PyObject* pid);

  absl::Status Memo(uint64_t index);
  absl::Status Get(uint64_t index);

  absl::Status Step(uint8_t op);

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

}  // namespace ckpt::interop::pickle_internal

#endif  // CKPT_INTEROP_PICKLE_UNPICKLER_H_
