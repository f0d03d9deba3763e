#include "interop/torch_pt.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "interop/pickle.h"
#include "interop/zip.h"

namespace ckpt::interop {
namespace {

constexpr uint64_t kMaxPickleBytes = 1ull << 31;

// The archive's directory: the X of the one "X/data.pkl" record.
absl::StatusOr<std::string> ArchiveDir(const ZipReader& zip) {
  std::string dir;
  int found = 0;
  bool torchscript = false;
  for (const ZipEntry& e : zip.entries()) {
    const size_t slash = e.name.find('/');
    if (slash == std::string::npos) continue;
    const absl::string_view rest = absl::string_view(e.name).substr(slash + 1);
    if (rest == "data.pkl") {
      dir = e.name.substr(0, slash);
      ++found;
    }
    if (rest == "constants.pkl" || absl::StartsWith(rest, "code/")) torchscript = true;
  }
  if (torchscript) {
    return absl::InvalidArgumentError(
        "this is a TorchScript archive (torch.jit.save), not a torch.save checkpoint; "
        "store it as an opaque file with `ckpt put`");
  }
  if (found == 0) {
    return absl::InvalidArgumentError(
        "zip archive without a <dir>/data.pkl record: not a torch.save checkpoint");
  }
  if (found > 1) {
    return absl::InvalidArgumentError("zip archive with several <dir>/data.pkl records");
  }
  return dir;
}

}  // namespace

absl::StatusOr<ImportedCheckpoint> ReadPt(absl::Span<const uint8_t> file,
                                          const ReadOptions& options) {
  CKPT_ASSIGN_OR_RETURN(ZipReader zip, ZipReader::Open(file));
  CKPT_ASSIGN_OR_RETURN(std::string dir, ArchiveDir(zip));
  if (const ZipEntry* order = zip.Find(dir + "/byteorder")) {
    CKPT_ASSIGN_OR_RETURN(std::string text, zip.Read(*order, 64));
    if (text != "little") {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported byte order '", text.substr(0, 16), "' (only little-endian)"));
    }
  }
  const ZipEntry* pkl = zip.Find(dir + "/data.pkl");
  CKPT_ASSIGN_OR_RETURN(std::string pickle, zip.Read(*pkl, kMaxPickleBytes));
  PickleOptions pickle_options;
  pickle_options.max_objects = options.max_objects;
  auto value = ParsePickle(pickle, pickle_options);
  if (!value.ok()) return Annotate(value.status(), dir + "/data.pkl");

  ImportedCheckpoint out;
  out.format = Format::kPt;
  StorageResolver resolver =
      [&](const StorageRef& ref) -> absl::StatusOr<absl::Span<const uint8_t>> {
    const std::string name = absl::StrCat(dir, "/data/", ref.key);
    const ZipEntry* record = zip.Find(name);
    if (record == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("storage '", ref.key, "' has no record '", name, "'"));
    }
    CKPT_ASSIGN_OR_RETURN(uint64_t need, StorageNumBytes(ref));
    if (record->size != need) {
      return absl::InvalidArgumentError(absl::StrCat("record '", name, "' holds ", record->size,
                                                     " bytes but its storage of ", ref.numel, " ",
                                                     DTypeName(ref.dtype), " needs ", need));
    }
    if (record->stored) {
      CKPT_ASSIGN_OR_RETURN(auto data, zip.StoredData(*record, options.verify_crc));
      if (options.verify_crc && options.done_with) options.done_with(data);
      return data;
    }
    out.copied_bytes += record->size;
    if (out.copied_bytes > options.max_copied_bytes) {
      return absl::InvalidArgumentError("too many bytes to copy out of compressed records");
    }
    CKPT_ASSIGN_OR_RETURN(std::string data, zip.Read(*record, need));
    out.owned.push_back(std::move(data));
    const std::string& owned = out.owned.back();
    return absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(owned.data()), owned.size());
  };
  CKPT_RETURN_IF_ERROR(PickleToTree(*value, resolver, options, &out));
  return out;
}

// ------------------------------------------------------------------ writer

namespace {

// A piece of data.pkl: literal opcodes, or the latin-1-as-UTF-8 text of a
// bytes node (streamed as its data arrives), preceded by its length.
struct Segment {
  std::string literal;
  size_t bytes_node = SIZE_MAX;
  int length_width = 4;  // BINUNICODE (4) or BINUNICODE8 (8)
};

// Stride of a contiguous tensor, as torch computes it (sizes of 0 count as 1).
std::vector<int64_t> ContiguousStride(const std::vector<int64_t>& shape) {
  std::vector<int64_t> stride(shape.size());
  int64_t s = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    stride[d] = s;
    s *= std::max<int64_t>(shape[d], 1);
  }
  return stride;
}

bool IsUntypedDType(DType dtype) {
  return dtype == DType::kUInt16 || dtype == DType::kUInt32 || dtype == DType::kUInt64;
}

std::string KeyName(const std::vector<std::string>& keys, size_t i) {
  return keys[i].empty() ? "<root>" : absl::StrCat("'", keys[i], "'");
}

class PtWriter : public CheckpointWriter {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Create(const Tree& tree,
                                                                  OutputFile* out) {
    auto w = std::unique_ptr<PtWriter>(new PtWriter(tree, out));
    CKPT_RETURN_IF_ERROR(w->Plan());
    CKPT_RETURN_IF_ERROR(w->Start());
    return std::unique_ptr<CheckpointWriter>(std::move(w));
  }

  absl::Status Write(size_t node, uint64_t offset, absl::string_view bytes) override {
    if (node >= tree_.size() || !tree_[node].has_data()) {
      return absl::InvalidArgumentError(absl::StrCat("data for node ", node, " without data"));
    }
    if (node < last_node_ || offset != received_[node] ||
        bytes.size() > tree_[node].data.size - offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("out-of-order data for node ", node, " at offset ", offset));
    }
    last_node_ = node;
    if (bytes.empty()) return absl::OkStatus();
    received_[node] += bytes.size();
    if (tree_[node].kind == NodeKind::kTensor) {
      const size_t rec = record_of_[node];
      CKPT_RETURN_IF_ERROR(out_->WriteAt(layout_.data_offset(rec) + offset, bytes));
      crc_[rec] = Crc32(crc_[rec], bytes);
      return absl::OkStatus();
    }
    // A bytes node: emit data.pkl up to its segment, then its text.
    CKPT_RETURN_IF_ERROR(AdvanceTo(segment_of_[node]));
    std::string text;
    text.reserve(bytes.size() * 2);
    for (char c : bytes) {
      const uint8_t b = static_cast<uint8_t>(c);
      if (b < 0x80) {
        text.push_back(c);
      } else {
        text.push_back(static_cast<char>(0xc0 | (b >> 6)));
        text.push_back(static_cast<char>(0x80 | (b & 0x3f)));
      }
    }
    CKPT_RETURN_IF_ERROR(out_->WriteAt(pkl_data_ + pkl_pos_, text));
    pkl_pos_ += text.size();
    text_crc_ = Crc32(text_crc_, text);
    text_len_ += text.size();
    if (received_[node] == tree_[node].data.size) CKPT_RETURN_IF_ERROR(CloseText());
    return absl::OkStatus();
  }

  absl::Status Finish() override {
    CKPT_RETURN_IF_ERROR(AdvanceTo(segments_.size()));
    for (size_t i = 0; i < tree_.size(); ++i) {
      if (tree_[i].has_data() && received_[i] != tree_[i].data.size) {
        return absl::FailedPreconditionError(absl::StrCat("export incomplete: ", received_[i],
                                                          " of ", tree_[i].data.size, " bytes of ",
                                                          KeyName(keys_, i)));
      }
    }
    layout_.SetSize(pkl_record_, pkl_pos_);
    layout_.SetCrc(pkl_record_, pkl_crc_);
    for (size_t rec = 0; rec < layout_.size(); ++rec) {
      if (rec >= first_tensor_record_ && rec != pkl_record_) layout_.SetCrc(rec, crc_[rec]);
      CKPT_RETURN_IF_ERROR(out_->WriteAt(layout_.header_offset(rec), layout_.LocalHeader(rec)));
    }
    return out_->WriteAt(layout_.end_of_records(), layout_.CentralDirectory());
  }

 private:
  PtWriter(const Tree& tree, OutputFile* out) : tree_(tree), out_(out) {}

  absl::Status Plan() {
    keys_ = FlattenedKeys(tree_);
    // end_[i]: one past the last node of i's subtree.
    end_.assign(tree_.size(), 0);
    {
      std::vector<std::pair<size_t, uint32_t>> open;  // node, children left
      for (size_t i = 0; i < tree_.size(); ++i) {
        if (!open.empty()) --open.back().second;
        if (tree_[i].is_container() && tree_[i].size > 0) {
          open.emplace_back(i, tree_[i].size);
        } else {
          end_[i] = i + 1;
          while (!open.empty() && open.back().second == 0) {
            end_[open.back().first] = i + 1;
            open.pop_back();
          }
        }
      }
      if (!open.empty()) return absl::InvalidArgumentError("malformed tree");
    }
    record_of_.assign(tree_.size(), SIZE_MAX);
    segment_of_.assign(tree_.size(), SIZE_MAX);
    received_.assign(tree_.size(), 0);

    ZipLayout& z = layout_;
    z.Add("archive/byteorder", 6, 6);
    z.Add("archive/version", 2, 2);
    first_tensor_record_ = z.size();
    uint64_t text_bound = 0;
    uint64_t storage = 0;
    for (size_t i = 0; i < tree_.size(); ++i) {
      const Node& n = tree_[i];
      if (n.kind == NodeKind::kTensor) {
        if (StorageClassName(n.tensor.dtype).empty() && !IsUntypedDType(n.tensor.dtype)) {
          return absl::InvalidArgumentError(absl::StrCat("tensor ", KeyName(keys_, i), ": dtype ",
                                                         DTypeName(n.tensor.dtype),
                                                         " cannot be written to a .pt file"));
        }
        auto bytes = n.tensor.NumBytes();
        if (!bytes.ok() || *bytes != n.data.size) {
          return absl::InvalidArgumentError(
              absl::StrCat("tensor ", KeyName(keys_, i), ": shape and data size disagree"));
        }
        if (n.tensor.device.empty() || !IsValidUtf8(n.tensor.device)) {
          return absl::InvalidArgumentError(
              absl::StrCat("tensor ", KeyName(keys_, i), ": invalid device"));
        }
        record_of_[i] = z.Add(absl::StrCat("archive/data/", storage++), n.data.size, n.data.size);
      } else if (n.kind == NodeKind::kBytes) {
        text_bound += 2 * n.data.size + 8;
      } else if (n.kind == NodeKind::kString && !IsValidUtf8(n.string_value)) {
        return absl::InvalidArgumentError(
            absl::StrCat("string ", KeyName(keys_, i), " is not valid UTF-8"));
      }
      if (const auto* s = std::get_if<std::string>(&n.key); s && !IsValidUtf8(*s)) {
        return absl::InvalidArgumentError(
            absl::StrCat("key ", KeyName(keys_, i), " is not valid UTF-8"));
      }
    }
    crc_.assign(z.size(), 0);
    CKPT_RETURN_IF_ERROR(BuildPickle());
    uint64_t literal = 0;
    for (const Segment& s : segments_) literal += s.literal.size();
    pkl_record_ = z.Add("archive/data.pkl", 0, literal + text_bound);
    pkl_data_ = z.data_offset(pkl_record_);
    return absl::OkStatus();
  }

  // data.pkl as segments, in pre-order like the tree.
  absl::Status BuildPickle() {
    segments_.emplace_back();
    std::string pending;        // literal opcodes not yet moved into a segment
    PickleEncoder p(&pending);  // one encoder for the whole pickle: it memoizes globals
    p.Proto();
    struct Open {
      size_t node;
      uint32_t left;
    };
    std::vector<Open> open;
    size_t storage = 0;
    for (size_t i = 0; i < tree_.size(); ++i) {
      const Node& n = tree_[i];
      if (!open.empty() && tree_[open.back().node].kind == NodeKind::kDict) {
        if (const auto* s = std::get_if<std::string>(&n.key)) {
          p.Str(*s);
        } else if (const auto* k = std::get_if<int64_t>(&n.key)) {
          p.Int(*k);
        } else {
          return absl::InvalidArgumentError(
              absl::StrCat("dict entry ", KeyName(keys_, i), " has no key"));
        }
      }
      switch (n.kind) {
        case NodeKind::kDict: {
          bool all_tensors = n.size > 0;
          for (size_t c = i + 1; c < end_[i]; c = end_[c]) {
            if (tree_[c].kind != NodeKind::kTensor) all_tensors = false;
          }
          if (all_tensors) {
            p.Global("collections", "OrderedDict");
            p.EmptyTuple();
            p.Reduce();
          } else {
            p.EmptyDict();
          }
          if (n.size > 0) p.Mark();
          break;
        }
        case NodeKind::kList:
          p.EmptyList();
          if (n.size > 0) p.Mark();
          break;
        case NodeKind::kTuple:
          if (n.size == 0) {
            p.EmptyTuple();
          } else {
            p.Mark();
          }
          break;
        case NodeKind::kNone:
          p.None();
          break;
        case NodeKind::kBool:
          p.Bool(n.bool_value);
          break;
        case NodeKind::kInt:
          p.Int(n.int_value);
          break;
        case NodeKind::kFloat:
          p.Float(n.float_value);
          break;
        case NodeKind::kString:
          p.Str(n.string_value);
          break;
        case NodeKind::kTensor:
          EncodeTensor(p, n, storage++);
          break;
        case NodeKind::kBytes: {
          p.Global("_codecs", "encode");
          const bool wide = n.data.size > 0x7fffffffu;
          pending.push_back(static_cast<char>(wide ? 0x8d : 'X'));
          segments_.back().literal += pending;
          pending.clear();
          segments_.emplace_back();
          segments_.back().bytes_node = i;
          segments_.back().length_width = wide ? 8 : 4;
          segment_of_[i] = segments_.size() - 1;
          segments_.emplace_back();
          p.Str("latin1");
          p.Tuple(2);
          p.Reduce();
          break;
        }
      }
      if (!open.empty()) --open.back().left;
      if (n.is_container() && n.size > 0) {
        open.push_back({i, n.size});
        continue;
      }
      while (!open.empty() && open.back().left == 0) {
        const Node& c = tree_[open.back().node];
        if (c.kind == NodeKind::kDict) p.SetItems();
        if (c.kind == NodeKind::kList) p.Appends();
        if (c.kind == NodeKind::kTuple) p.Raw("t");
        open.pop_back();
      }
    }
    p.Stop();
    segments_.back().literal += pending;
    return absl::OkStatus();
  }

  void EncodeTensor(PickleEncoder& p, const Node& n, size_t storage) {
    const bool parameter = n.tensor.requires_grad;
    const bool untyped = IsUntypedDType(n.tensor.dtype);
    if (parameter) {
      p.Global("torch._utils", "_rebuild_parameter");
      p.Mark();
    }
    p.Global("torch._utils", untyped ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
    p.Mark();
    // Persistent id ('storage', torch.FloatStorage, key, location, numel).
    p.Mark();
    p.Str("storage");
    if (untyped) {
      p.Global("torch.storage", "UntypedStorage");
    } else {
      p.Global("torch", StorageClassName(n.tensor.dtype));
    }
    p.Str(absl::StrCat(storage));
    p.Str(n.tensor.device);
    const uint64_t numel = n.data.size / std::max<size_t>(DTypeSize(n.tensor.dtype), 1);
    p.Int(static_cast<int64_t>(untyped ? n.data.size : numel));
    p.Raw("t");
    p.BinPersId();
    p.Int(0);
    p.IntTuple(n.tensor.shape);
    p.IntTuple(ContiguousStride(n.tensor.shape));
    p.Bool(false);
    p.Global("collections", "OrderedDict");
    p.EmptyTuple();
    p.Reduce();
    if (untyped) p.Global("torch", DTypeName(n.tensor.dtype));
    p.Raw("t");
    p.Reduce();
    if (parameter) {
      p.Bool(true);
      p.Global("collections", "OrderedDict");
      p.EmptyTuple();
      p.Reduce();
      p.Raw("t");
      p.Reduce();
    }
  }

  // Writes the fixed records now; tensor records fill in as data arrives.
  absl::Status Start() {
    const std::pair<size_t, std::string> fixed[] = {{0, "little"}, {1, "3\n"}};
    for (const auto& [rec, text] : fixed) {
      layout_.SetCrc(rec, Crc32(0, text));
      CKPT_RETURN_IF_ERROR(out_->WriteAt(layout_.header_offset(rec), layout_.LocalHeader(rec)));
      CKPT_RETURN_IF_ERROR(out_->WriteAt(layout_.data_offset(rec), text));
    }
    return absl::OkStatus();
  }

  // Emits every data.pkl segment before `target` (all of them for
  // segments_.size()), and opens `target` if it is a bytes node's text. The
  // text of a bytes node must be complete before anything after it.
  absl::Status AdvanceTo(size_t target) {
    while (next_segment_ < target) {
      const Segment& s = segments_[next_segment_];
      if (s.bytes_node == SIZE_MAX) {
        CKPT_RETURN_IF_ERROR(out_->WriteAt(pkl_data_ + pkl_pos_, s.literal));
        pkl_pos_ += s.literal.size();
        pkl_crc_ = Crc32(pkl_crc_, s.literal);
        ++next_segment_;
        continue;
      }
      if (!text_open_) OpenText();
      if (received_[s.bytes_node] != tree_[s.bytes_node].data.size) {
        return absl::InvalidArgumentError(
            absl::StrCat("data of ", KeyName(keys_, s.bytes_node), " incomplete"));
      }
      CKPT_RETURN_IF_ERROR(CloseText());
    }
    if (next_segment_ == target && target < segments_.size() && !text_open_) OpenText();
    return absl::OkStatus();
  }

  // Reserves the length of the current bytes node's text.
  void OpenText() {
    text_open_ = true;
    length_pos_ = pkl_pos_;
    pkl_pos_ += segments_[next_segment_].length_width;
    text_crc_ = 0;
    text_len_ = 0;
  }

  absl::Status CloseText() {
    const Segment& s = segments_[next_segment_];
    std::string len;
    for (int i = 0; i < s.length_width; ++i) {
      len.push_back(static_cast<char>((text_len_ >> (8 * i)) & 0xff));
    }
    if (s.length_width == 4 && text_len_ > 0xffffffffu) {
      return absl::InvalidArgumentError("bytes value too large for BINUNICODE");
    }
    CKPT_RETURN_IF_ERROR(out_->WriteAt(pkl_data_ + length_pos_, len));
    pkl_crc_ = Crc32(pkl_crc_, len);
    pkl_crc_ = Crc32Combine(pkl_crc_, text_crc_, text_len_);
    text_open_ = false;
    ++next_segment_;
    return absl::OkStatus();
  }

  const Tree& tree_;
  OutputFile* out_;
  std::vector<std::string> keys_;
  std::vector<size_t> end_;
  std::vector<size_t> record_of_;
  std::vector<size_t> segment_of_;
  std::vector<uint64_t> received_;
  std::vector<uint32_t> crc_;
  std::vector<Segment> segments_;
  ZipLayout layout_;
  size_t first_tensor_record_ = 0;
  size_t pkl_record_ = 0;
  uint64_t pkl_data_ = 0;
  uint64_t pkl_pos_ = 0;
  uint32_t pkl_crc_ = 0;
  size_t next_segment_ = 0;
  bool text_open_ = false;
  uint64_t length_pos_ = 0;
  uint32_t text_crc_ = 0;
  uint64_t text_len_ = 0;
  size_t last_node_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CheckpointWriter>> NewPtWriter(const Tree& tree, OutputFile* out) {
  return PtWriter::Create(tree, out);
}

}  // namespace ckpt::interop
