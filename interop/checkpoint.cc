#include "interop/checkpoint.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "interop/safetensors.h"
#include "interop/torch_pt.h"

namespace ckpt::interop {

absl::string_view FormatName(Format format) {
  switch (format) {
    case Format::kPt:
      return "pt";
    case Format::kSafetensors:
      return "safetensors";
    case Format::kUnknown:
      break;
  }
  return "unknown";
}

absl::StatusOr<Format> DetectFormat(absl::Span<const uint8_t> file) {
  auto at = [&](size_t offset, absl::string_view magic) {
    return file.size() >= offset + magic.size() &&
           absl::string_view(reinterpret_cast<const char*>(file.data()) + offset, magic.size()) ==
               magic;
  };
  if (at(0, "PK\x03\x04") || at(0, absl::string_view("PK\x05\x06", 4))) return Format::kPt;
  if (file.size() >= 9 && file[8] == '{') {
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= uint64_t{file[i]} << (8 * i);
    if (n > 0) return Format::kSafetensors;
  }
  if (at(257, "ustar")) {
    return absl::InvalidArgumentError(
        "unsupported legacy format: a tar archive from torch.save of PyTorch < 0.4; load it "
        "with that PyTorch and save it again with torch.save (PyTorch >= 1.6 writes zip "
        "archives)");
  }
  if (file.size() >= 2 && file[0] == 0x80 && file[1] <= 5) {
    return absl::InvalidArgumentError(
        "unsupported legacy format: a bare pickle stream, as torch.save wrote before "
        "PyTorch 1.6 or with _use_new_zipfile_serialization=False; load it in Python and "
        "save it again with torch.save (zip format)");
  }
  if (file.empty()) return absl::InvalidArgumentError("empty file");
  return absl::InvalidArgumentError(
      "unrecognized file format: neither a torch.save zip archive (.pt) nor a safetensors "
      "file");
}

Format FormatFromFileName(absl::string_view path) {
  const size_t slash = path.rfind('/');
  absl::string_view base = slash == absl::string_view::npos ? path : path.substr(slash + 1);
  const size_t dot = base.rfind('.');
  if (dot == absl::string_view::npos) return Format::kUnknown;
  const std::string ext = absl::AsciiStrToLower(base.substr(dot + 1));
  if (ext == "pt" || ext == "pth" || ext == "bin" || ext == "ckpt" || ext == "tar") {
    return Format::kPt;
  }
  if (ext == "safetensors") return Format::kSafetensors;
  return Format::kUnknown;
}

absl::StatusOr<ImportedCheckpoint> ReadCheckpoint(absl::Span<const uint8_t> file,
                                                  const ReadOptions& options) {
  auto format = DetectFormat(file);
  if (!format.ok()) return format.status();
  if (*format == Format::kSafetensors) return ReadSafetensors(file, options);
  return ReadPt(file, options);
}

absl::StatusOr<std::unique_ptr<CheckpointWriter>> NewCheckpointWriter(Format format,
                                                                      const Tree& tree,
                                                                      OutputFile* out,
                                                                      const WriteOptions& options) {
  switch (format) {
    case Format::kPt:
      return NewPtWriter(tree, out);
    case Format::kSafetensors:
      return NewSafetensorsWriter(tree, out, options);
    case Format::kUnknown:
      break;
  }
  return absl::InvalidArgumentError("unknown output format");
}

}  // namespace ckpt::interop
