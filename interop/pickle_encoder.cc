// PickleEncoder: the opcodes the .pt writer emits (protocol 2), and the
// storage class name of each dtype.

#include <cstring>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "interop/pickle.h"
#include "interop/pickle_format.h"

namespace ckpt::interop {
namespace {

void AppendLE(std::string* out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

absl::string_view StorageClassName(DType dtype) {
  for (const StorageClass& c : kStorageClasses) {
    if (c.dtype == dtype) return c.name;
  }
  return "";
}

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
  } else if (v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max()) {
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
