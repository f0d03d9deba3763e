#include "storage/codec.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace ckpt::storage {
namespace {

// Format bytes: bump one when its encoding changes; decoders reject unknown
// ones rather than guess.
constexpr uint8_t kRefValueFormat = 1;
constexpr uint8_t kPendingFormat = 1;
constexpr uint8_t kRetentionFormat = 1;
constexpr uint8_t kVersionFormat = 1;
constexpr uint8_t kTreeFormat = 1;

// Node field flags of the tree encoding: a field is written only when it
// differs from a default-constructed Node.
enum NodeField : uint64_t {
  kFieldSize = 1 << 0,
  kFieldBoolTrue = 1 << 1,  // No payload.
  kFieldInt = 1 << 2,
  kFieldFloat = 1 << 3,
  kFieldString = 1 << 4,
  kFieldDType = 1 << 5,
  kFieldShape = 1 << 6,
  kFieldDevice = 1 << 7,
  kFieldRequiresGrad = 1 << 8,  // No payload.
  kFieldData = 1 << 9,
  kFieldStats = 1 << 10,  // Format 2: count, nan, +inf, -inf, then min, max, mean, std, l2.
};
constexpr uint64_t kAllNodeFields = (1 << 11) - 1;

enum KeyTag : uint8_t { kKeyNone = 0, kKeyString = 1, kKeyInt = 2 };

constexpr int kMaxNodeKind = static_cast<int>(NodeKind::kBytes);
const char kDefaultDevice[] = "cpu";

// --- Writer ----------------------------------------------------------------

class Writer {
 public:
  void Byte(uint8_t b) { out_.push_back(static_cast<char>(b)); }
  void Varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  void Signed(int64_t v) {
    // Zigzag so that small negative numbers stay small.
    uint64_t u = static_cast<uint64_t>(v);
    Varint((u << 1) ^ (v < 0 ? ~uint64_t{0} : 0));
  }
  void Fixed64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
  }
  void String(absl::string_view s) {
    Varint(s.size());
    out_.append(s.data(), s.size());
  }
  void Raw(absl::string_view s) { out_.append(s.data(), s.size()); }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

// --- Reader ----------------------------------------------------------------

// Reads untrusted bytes; every method fails with DataLoss("<what>: ...")
// instead of reading past the end.
class Reader {
 public:
  Reader(absl::string_view data, absl::string_view what) : data_(data), what_(what) {}

  size_t remaining() const { return data_.size() - pos_; }
  bool done() const { return pos_ == data_.size(); }

  absl::Status Error(absl::string_view why) const {
    return absl::DataLossError(absl::StrCat(what_, ": ", why, " at byte ", pos_));
  }

  absl::StatusOr<uint8_t> Byte() {
    if (remaining() < 1) return Error("truncated");
    return static_cast<uint8_t>(data_[pos_++]);
  }
  absl::StatusOr<uint64_t> Varint() {
    uint64_t result = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (remaining() < 1) return Error("truncated varint");
      uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      // The 10th byte may only carry the top bit of a 64-bit value.
      if (shift == 63 && b > 1) return Error("varint overflows 64 bits");
      result |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return result;
    }
    return Error("varint too long");
  }
  absl::StatusOr<uint32_t> Varint32(absl::string_view field) {
    auto v = Varint();
    if (!v.ok()) return v.status();
    if (*v > std::numeric_limits<uint32_t>::max()) {
      return Error(absl::StrCat(field, " out of range: ", *v));
    }
    return static_cast<uint32_t>(*v);
  }
  absl::StatusOr<int64_t> Signed() {
    auto v = Varint();
    if (!v.ok()) return v.status();
    return static_cast<int64_t>((*v >> 1) ^ (~(*v & 1) + 1));
  }
  absl::StatusOr<uint64_t> Fixed64() {
    if (remaining() < 8) return Error("truncated fixed64");
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) {
      v |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    }
    pos_ += 8;
    return v;
  }
  absl::StatusOr<absl::string_view> Raw(size_t n) {
    if (remaining() < n) return Error("truncated");
    absl::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  absl::StatusOr<std::string> String() {
    auto n = Varint();
    if (!n.ok()) return n.status();
    if (*n > remaining()) return Error(absl::StrCat("string length ", *n, " past the end"));
    std::string s(data_.substr(pos_, *n));
    pos_ += *n;
    return s;
  }
  absl::Status Format(uint8_t expected) {
    auto b = Byte();
    if (!b.ok()) return b.status();
    if (*b != expected) return Error(absl::StrCat("unknown format ", int{*b}));
    return absl::OkStatus();
  }
  absl::Status Finish() {
    if (!done()) return Error(absl::StrCat(remaining(), " trailing bytes"));
    return absl::OkStatus();
  }

 private:
  absl::string_view data_;
  absl::string_view what_;
  size_t pos_ = 0;
};

absl::Status KeyError(absl::string_view what, absl::string_view key) {
  return absl::DataLossError(absl::StrCat("malformed ", what, " key of ", key.size(), " bytes"));
}

void WriteDataRef(Writer& w, const DataRef& data) {
  w.Varint(data.size);
  w.Varint(data.chunk_size);
  w.Varint(data.chunks.size());
  for (const Digest& d : data.chunks) w.Raw(d.view());
}

absl::Status ReadDataRef(Reader& r, DataRef* data) {
  CKPT_ASSIGN_OR_RETURN(data->size, r.Varint());
  CKPT_ASSIGN_OR_RETURN(data->chunk_size, r.Varint32("chunk size"));
  CKPT_ASSIGN_OR_RETURN(uint64_t n, r.Varint());
  if (n > r.remaining() / 16) {
    return r.Error(
        absl::StrCat(n, " chunk digests do not fit in the remaining ", r.remaining(), " bytes"));
  }
  data->chunks.resize(n);
  for (Digest& d : data->chunks) {
    CKPT_ASSIGN_OR_RETURN(absl::string_view raw, r.Raw(16));
    std::memcpy(d.bytes.data(), raw.data(), 16);
  }
  return absl::OkStatus();
}

bool IsDefault(const DataRef& d) { return d.size == 0 && d.chunk_size == 0 && d.chunks.empty(); }

uint64_t DoubleBits(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

double BitsDouble(uint64_t bits) {
  double v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

}  // namespace

// --- Fixed-width -------------------------------------------------------------

std::string EncodeBigEndian64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
  return out;
}

absl::StatusOr<uint64_t> DecodeBigEndian64(absl::string_view bytes) {
  if (bytes.size() != 8) {
    return absl::DataLossError(
        absl::StrCat("expected an 8-byte integer, got ", bytes.size(), " bytes"));
  }
  uint64_t v = 0;
  for (char c : bytes) v = (v << 8) | static_cast<uint8_t>(c);
  return v;
}

// --- Keys --------------------------------------------------------------------

std::string ChunkKey(uint64_t chunk_id) { return EncodeBigEndian64(chunk_id); }

absl::StatusOr<uint64_t> ParseChunkKey(absl::string_view key) {
  if (key.size() != 8) return KeyError("chunk", key);
  return DecodeBigEndian64(key);
}

std::string RefPrefix(absl::string_view ns) { return absl::StrCat(ns, absl::string_view("\0", 1)); }

std::string RefKey(absl::string_view ns, const Digest& digest) {
  return absl::StrCat(ns, absl::string_view("\0", 1), digest.view());
}

absl::StatusOr<std::pair<std::string, Digest>> ParseRefKey(absl::string_view key) {
  if (key.size() < 17 || key[key.size() - 17] != '\0') return KeyError("refs", key);
  Digest d;
  std::memcpy(d.bytes.data(), key.data() + key.size() - 16, 16);
  return std::make_pair(std::string(key.substr(0, key.size() - 17)), d);
}

std::string VersionPrefix(absl::string_view name) {
  return absl::StrCat("v", name, absl::string_view("\0", 1));
}

std::string VersionNamePrefix(absl::string_view name_prefix) {
  return absl::StrCat("v", name_prefix);
}

std::string VersionKeysAfter(absl::string_view name) {
  return absl::StrCat("v", name, absl::string_view("\x01", 1));
}

std::string VersionKey(absl::string_view name, uint64_t version) {
  return absl::StrCat(VersionPrefix(name), EncodeBigEndian64(version));
}

std::string ManifestKey(absl::string_view name, uint64_t version) {
  return absl::StrCat("m", name, absl::string_view("\0", 1), EncodeBigEndian64(version));
}

std::string CounterKey(absl::string_view name) { return absl::StrCat("n", name); }

std::string RetentionKey(absl::string_view name) { return absl::StrCat("r", name); }

absl::StatusOr<std::pair<std::string, uint64_t>> ParseVersionKey(absl::string_view key) {
  // "v" + name (>= 1 byte) + "\0" + 8 bytes.
  if (key.size() < 11 || key[0] != 'v' || key[key.size() - 9] != '\0') {
    return KeyError("version", key);
  }
  uint64_t version = DecodeBigEndian64(key.substr(key.size() - 8)).value();
  return std::make_pair(std::string(key.substr(1, key.size() - 10)), version);
}

std::string TagPrefix(absl::string_view name) {
  return absl::StrCat(name, absl::string_view("\0", 1));
}

std::string TagKey(absl::string_view name, absl::string_view tag) {
  return absl::StrCat(TagPrefix(name), tag);
}

absl::StatusOr<std::pair<std::string, std::string>> ParseTagKey(absl::string_view key) {
  size_t sep = key.find('\0');
  if (sep == absl::string_view::npos || sep == 0 || sep + 1 == key.size()) {
    return KeyError("tag", key);
  }
  return std::make_pair(std::string(key.substr(0, sep)), std::string(key.substr(sep + 1)));
}

std::string PendingKey(uint64_t upload_id) {
  return absl::StrCat(kPendingPrefix, EncodeBigEndian64(upload_id));
}

absl::StatusOr<uint64_t> ParsePendingKey(absl::string_view key) {
  if (key.size() != 9 || key[0] != 'p') return KeyError("pending", key);
  return DecodeBigEndian64(key.substr(1));
}

std::string PrefixSuccessor(absl::string_view prefix) {
  std::string s(prefix);
  while (!s.empty()) {
    if (static_cast<uint8_t>(s.back()) != 0xff) {
      s.back() = static_cast<char>(static_cast<uint8_t>(s.back()) + 1);
      return s;
    }
    s.pop_back();
  }
  return s;
}

// --- Refs value ----------------------------------------------------------------

std::string EncodeRefValue(const RefValue& value) {
  Writer w;
  w.Byte(kRefValueFormat);
  w.Varint(value.chunk_id);
  w.Varint(value.length);
  w.Varint(value.refcount);
  return w.Take();
}

absl::StatusOr<RefValue> DecodeRefValue(absl::string_view bytes) {
  Reader r(bytes, "corrupt refs entry");
  CKPT_RETURN_IF_ERROR(r.Format(kRefValueFormat));
  RefValue v;
  CKPT_ASSIGN_OR_RETURN(v.chunk_id, r.Varint());
  CKPT_ASSIGN_OR_RETURN(v.length, r.Varint());
  CKPT_ASSIGN_OR_RETURN(v.refcount, r.Varint());
  CKPT_RETURN_IF_ERROR(r.Finish());
  return v;
}

// --- Retention policy ----------------------------------------------------------

std::string EncodeRetentionPolicy(const RetentionPolicy& policy) {
  Writer w;
  w.Byte(kRetentionFormat);
  w.Varint(policy.keep_last);
  w.Varint(policy.keep_best);
  w.Signed(policy.keep_every_steps);
  w.String(policy.metric);
  w.Byte(policy.higher_is_better ? 1 : 0);
  return w.Take();
}

absl::StatusOr<RetentionPolicy> DecodeRetentionPolicy(absl::string_view bytes) {
  Reader r(bytes, "corrupt retention policy");
  CKPT_RETURN_IF_ERROR(r.Format(kRetentionFormat));
  RetentionPolicy p;
  CKPT_ASSIGN_OR_RETURN(p.keep_last, r.Varint32("keep_last"));
  CKPT_ASSIGN_OR_RETURN(p.keep_best, r.Varint32("keep_best"));
  CKPT_ASSIGN_OR_RETURN(p.keep_every_steps, r.Signed());
  CKPT_ASSIGN_OR_RETURN(p.metric, r.String());
  CKPT_ASSIGN_OR_RETURN(uint8_t higher, r.Byte());
  if (higher > 1) return r.Error("higher_is_better is not 0 or 1");
  p.higher_is_better = higher == 1;
  CKPT_RETURN_IF_ERROR(r.Finish());
  return p;
}

// --- Pending record ------------------------------------------------------------

std::string EncodePendingRecord(const PendingRecord& record) {
  Writer w;
  w.Byte(kPendingFormat);
  w.Varint(record.ranges.size());
  for (const ChunkIdRange& range : record.ranges) {
    w.Varint(range.lo);
    w.Varint(range.hi - range.lo);
  }
  w.Varint(record.chunks);
  w.Varint(record.bytes);
  return w.Take();
}

absl::StatusOr<PendingRecord> DecodePendingRecord(absl::string_view bytes) {
  Reader r(bytes, "corrupt pending record");
  CKPT_RETURN_IF_ERROR(r.Format(kPendingFormat));
  PendingRecord record;
  CKPT_ASSIGN_OR_RETURN(uint64_t n, r.Varint());
  if (n > r.remaining() / 2) return r.Error(absl::StrCat(n, " ranges do not fit"));
  record.ranges.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    ChunkIdRange range;
    CKPT_ASSIGN_OR_RETURN(range.lo, r.Varint());
    CKPT_ASSIGN_OR_RETURN(uint64_t span, r.Varint());
    if (span > std::numeric_limits<uint64_t>::max() - range.lo) {
      return r.Error("range past the largest chunk id");
    }
    range.hi = range.lo + span;
    record.ranges.push_back(range);
  }
  CKPT_ASSIGN_OR_RETURN(record.chunks, r.Varint());
  CKPT_ASSIGN_OR_RETURN(record.bytes, r.Varint());
  CKPT_RETURN_IF_ERROR(r.Finish());
  return record;
}

// --- Version record ------------------------------------------------------------

std::string EncodeVersionRecord(const VersionInfo& info) {
  Writer w;
  w.Byte(kVersionFormat);
  w.String(info.name);
  w.Varint(info.version);
  w.Signed(info.create_time_ms);
  w.Signed(info.step);
  w.Signed(info.epoch);
  w.Varint(info.metadata.size());
  for (const auto& [key, value] : info.metadata) {
    w.String(key);
    w.String(value);
  }
  w.Varint(info.num_tensors);
  w.Varint(info.num_nodes);
  w.Varint(info.data_bytes);
  w.Varint(info.new_bytes);
  w.Varint(info.world_size);
  // Optional tail (store format 2): records without it have no parent.
  if (!info.parent.empty()) w.String(info.parent);
  return w.Take();
}

absl::StatusOr<VersionInfo> DecodeVersionRecord(absl::string_view bytes) {
  Reader r(bytes, "corrupt version record");
  CKPT_RETURN_IF_ERROR(r.Format(kVersionFormat));
  VersionInfo info;
  CKPT_ASSIGN_OR_RETURN(info.name, r.String());
  CKPT_ASSIGN_OR_RETURN(info.version, r.Varint());
  CKPT_ASSIGN_OR_RETURN(info.create_time_ms, r.Signed());
  CKPT_ASSIGN_OR_RETURN(info.step, r.Signed());
  CKPT_ASSIGN_OR_RETURN(info.epoch, r.Signed());
  CKPT_ASSIGN_OR_RETURN(uint64_t n, r.Varint());
  if (n > r.remaining() / 2) return r.Error(absl::StrCat(n, " metadata entries do not fit"));
  for (uint64_t i = 0; i < n; ++i) {
    CKPT_ASSIGN_OR_RETURN(std::string key, r.String());
    CKPT_ASSIGN_OR_RETURN(std::string value, r.String());
    if (!info.metadata.emplace(std::move(key), std::move(value)).second) {
      return r.Error("duplicate metadata key");
    }
  }
  CKPT_ASSIGN_OR_RETURN(info.num_tensors, r.Varint());
  CKPT_ASSIGN_OR_RETURN(info.num_nodes, r.Varint());
  CKPT_ASSIGN_OR_RETURN(info.data_bytes, r.Varint());
  CKPT_ASSIGN_OR_RETURN(info.new_bytes, r.Varint());
  CKPT_ASSIGN_OR_RETURN(info.world_size, r.Varint32("world size"));
  if (r.remaining() > 0) {
    CKPT_ASSIGN_OR_RETURN(info.parent, r.String());
  }
  CKPT_RETURN_IF_ERROR(r.Finish());
  return info;
}

// --- Tree ----------------------------------------------------------------------

std::string EncodeTree(const Tree& tree) {
  Writer w;
  w.Byte(kTreeFormat);
  w.Varint(tree.size());
  for (const Node& node : tree) {
    w.Byte(static_cast<uint8_t>(node.kind));
    if (const auto* s = std::get_if<std::string>(&node.key)) {
      w.Byte(kKeyString);
      w.String(*s);
    } else if (const auto* i = std::get_if<int64_t>(&node.key)) {
      w.Byte(kKeyInt);
      w.Signed(*i);
    } else {
      w.Byte(kKeyNone);
    }
    const uint64_t float_bits = DoubleBits(node.float_value);
    uint64_t flags = 0;
    if (node.size != 0) flags |= kFieldSize;
    if (node.bool_value) flags |= kFieldBoolTrue;
    if (node.int_value != 0) flags |= kFieldInt;
    if (float_bits != 0) flags |= kFieldFloat;
    if (!node.string_value.empty()) flags |= kFieldString;
    if (node.tensor.dtype != DType::kUnspecified) flags |= kFieldDType;
    if (!node.tensor.shape.empty()) flags |= kFieldShape;
    if (node.tensor.device != kDefaultDevice) flags |= kFieldDevice;
    if (node.tensor.requires_grad) flags |= kFieldRequiresGrad;
    if (!IsDefault(node.data)) flags |= kFieldData;
    if (node.tensor.stats) flags |= kFieldStats;
    w.Varint(flags);
    if (flags & kFieldSize) w.Varint(node.size);
    if (flags & kFieldInt) w.Signed(node.int_value);
    if (flags & kFieldFloat) w.Fixed64(float_bits);
    if (flags & kFieldString) w.String(node.string_value);
    if (flags & kFieldDType) w.Varint(static_cast<uint64_t>(node.tensor.dtype));
    if (flags & kFieldShape) {
      w.Varint(node.tensor.shape.size());
      for (int64_t dim : node.tensor.shape) w.Signed(dim);
    }
    if (flags & kFieldDevice) w.String(node.tensor.device);
    if (flags & kFieldData) WriteDataRef(w, node.data);
    if (flags & kFieldStats) {
      const TensorStats& st = *node.tensor.stats;
      for (uint64_t v : {st.count, st.nan, st.pos_inf, st.neg_inf}) w.Varint(v);
      for (double v : {st.min, st.max, st.mean, st.std, st.l2}) w.Fixed64(DoubleBits(v));
    }
  }
  return w.Take();
}

absl::StatusOr<Tree> DecodeTree(absl::string_view bytes) {
  Reader r(bytes, "corrupt manifest");
  CKPT_RETURN_IF_ERROR(r.Format(kTreeFormat));
  CKPT_ASSIGN_OR_RETURN(uint64_t n, r.Varint());
  // Every node takes at least 3 bytes (kind, key tag, flags).
  if (n > r.remaining() / 3) {
    return r.Error(absl::StrCat(n, " nodes do not fit in ", r.remaining(), " bytes"));
  }
  Tree tree(n);
  for (Node& node : tree) {
    CKPT_ASSIGN_OR_RETURN(uint8_t kind, r.Byte());
    if (kind > kMaxNodeKind) return r.Error(absl::StrCat("unknown node kind ", int{kind}));
    node.kind = static_cast<NodeKind>(kind);
    CKPT_ASSIGN_OR_RETURN(uint8_t key_tag, r.Byte());
    switch (key_tag) {
      case kKeyNone:
        break;
      case kKeyString: {
        CKPT_ASSIGN_OR_RETURN(std::string key, r.String());
        node.key = std::move(key);
        break;
      }
      case kKeyInt: {
        CKPT_ASSIGN_OR_RETURN(int64_t key, r.Signed());
        node.key = key;
        break;
      }
      default:
        return r.Error(absl::StrCat("unknown key tag ", int{key_tag}));
    }
    CKPT_ASSIGN_OR_RETURN(uint64_t flags, r.Varint());
    if (flags & ~kAllNodeFields) return r.Error(absl::StrCat("unknown node fields ", flags));
    if (flags & kFieldSize) {
      CKPT_ASSIGN_OR_RETURN(node.size, r.Varint32("container size"));
    }
    node.bool_value = (flags & kFieldBoolTrue) != 0;
    if (flags & kFieldInt) {
      CKPT_ASSIGN_OR_RETURN(node.int_value, r.Signed());
    }
    if (flags & kFieldFloat) {
      CKPT_ASSIGN_OR_RETURN(uint64_t bits, r.Fixed64());
      std::memcpy(&node.float_value, &bits, sizeof bits);
    }
    if (flags & kFieldString) {
      CKPT_ASSIGN_OR_RETURN(node.string_value, r.String());
    }
    if (flags & kFieldDType) {
      CKPT_ASSIGN_OR_RETURN(uint64_t dtype, r.Varint());
      if (dtype > static_cast<uint64_t>(kMaxDType)) {
        return r.Error(absl::StrCat("unknown dtype ", dtype));
      }
      node.tensor.dtype = static_cast<DType>(dtype);
    }
    if (flags & kFieldShape) {
      CKPT_ASSIGN_OR_RETURN(uint64_t ndims, r.Varint());
      if (ndims > r.remaining()) return r.Error(absl::StrCat(ndims, " dimensions do not fit"));
      node.tensor.shape.resize(ndims);
      for (int64_t& dim : node.tensor.shape) {
        CKPT_ASSIGN_OR_RETURN(dim, r.Signed());
      }
    }
    if (flags & kFieldDevice) {
      CKPT_ASSIGN_OR_RETURN(node.tensor.device, r.String());
    }
    node.tensor.requires_grad = (flags & kFieldRequiresGrad) != 0;
    if (flags & kFieldData) CKPT_RETURN_IF_ERROR(ReadDataRef(r, &node.data));
    if (flags & kFieldStats) {
      TensorStats& st = node.tensor.stats.emplace();
      for (uint64_t* v : {&st.count, &st.nan, &st.pos_inf, &st.neg_inf}) {
        CKPT_ASSIGN_OR_RETURN(*v, r.Varint());
      }
      for (double* v : {&st.min, &st.max, &st.mean, &st.std, &st.l2}) {
        CKPT_ASSIGN_OR_RETURN(uint64_t bits, r.Fixed64());
        *v = BitsDouble(bits);
      }
    }
  }
  CKPT_RETURN_IF_ERROR(r.Finish());
  return tree;
}

}  // namespace ckpt::storage
