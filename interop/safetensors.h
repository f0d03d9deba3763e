#ifndef CKPT_INTEROP_SAFETENSORS_H_
#define CKPT_INTEROP_SAFETENSORS_H_

// The safetensors format: an 8-byte little-endian header length N, N bytes
// of JSON {"__metadata__": {str: str}, "name": {"dtype": "F32", "shape":
// [2, 3], "data_offsets": [begin, end]}, ...} (padded with spaces), then the
// raw little-endian tensor bytes; offsets are relative to the data section.
//
// Reading keeps the header's key order (the reference writer orders it like
// the data). Writing keeps the tree's order, lays the data out in that order
// without gaps (the reference reader accepts unaligned data), and flattens
// nested containers of tensors into "/"-joined keys ("model/fc.weight",
// list items by index); a tree holding anything but tensors is refused.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/types.h"
#include "interop/checkpoint.h"

namespace ckpt::interop {

/// Largest header accepted, as the reference implementation (100 MB).
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

/// One tensor of a safetensors header.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kUnspecified;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  ///< Offsets into the data section.
  uint64_t end = 0;
};

/// A parsed safetensors header.
struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  ///< In header order.
  std::map<std::string, std::string> metadata;
};

/// Parses and validates the JSON header of a file whose data section is
/// `data_size` bytes: every entry has a known dtype, non-negative shape,
/// offsets with begin <= end <= data_size and end - begin equal to the
/// shape's byte size; no two entries overlap; at most `max_entries`.
/// InvalidArgument naming the entry otherwise. Pure: no I/O.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view json, uint64_t data_size,
                                                         uint64_t max_entries = 1'000'000);

/// Reads a whole .safetensors file. See ReadCheckpoint.
absl::StatusOr<ImportedCheckpoint> ReadSafetensors(absl::Span<const uint8_t> file,
                                                   const ReadOptions& options);

/// The safetensors dtype name ("F32") of a dtype, or "" if it has none
/// (complex128).
absl::string_view SafetensorsDTypeName(DType dtype);

/// A streaming .safetensors writer for `tree`. See NewCheckpointWriter.
absl::StatusOr<std::unique_ptr<CheckpointWriter>> NewSafetensorsWriter(const Tree& tree,
                                                                       OutputFile* out,
                                                                       const WriteOptions& options);

}  // namespace ckpt::interop

#endif  // CKPT_INTEROP_SAFETENSORS_H_
