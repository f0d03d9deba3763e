#ifndef CKPT_INTEROP_CHECKPOINT_H_
#define CKPT_INTEROP_CHECKPOINT_H_

// Reading and writing checkpoint files of other tools: PyTorch's zip-based
// `.pt` format (torch.save, PyTorch >= 1.6) and `.safetensors`. No LibTorch,
// no gRPC: the value tree of common/types.h in, file bytes out, and back.
//
// Import: map the file, ReadCheckpoint() -> a Tree whose tensor bytes are
// spans into the mapping (copied only for non-contiguous views, compressed
// records and Python bytes objects), ready for RawClient::Save.
//
//   auto file = MappedFile::Open("model.pt");
//   auto imported = ReadCheckpoint((*file)->bytes(), {});
//
// Export: NewCheckpointWriter() on the tree of a load (LoadSink::OnTree), then
// Write() each piece as it streams (LoadSink::OnData), then Finish(). Memory
// stays independent of the checkpoint's size.
//
// Value mapping (Python <-> tree): dict and collections.OrderedDict -> kDict
// (key order kept; str or int keys), list -> kList, tuple and torch.Size ->
// kTuple, int (64-bit) -> kInt, float -> kFloat, bool -> kBool, str -> kString,
// None -> kNone, bytes -> kBytes, tensors and nn.Parameters -> kTensor
// (dtype, shape, contiguous bytes, the storage's device, requires_grad).

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/types.h"

namespace ckpt::interop {

/// File formats this library reads and writes.
enum class Format {
  kUnknown,
  kPt,           ///< torch.save's zip archive (data.pkl + data/N records).
  kSafetensors,  ///< 8-byte header length, JSON header, raw data.
};

/// "pt", "safetensors" or "unknown".
absl::string_view FormatName(Format format);

/// The format of a file, judged from its first bytes (not its name): a zip
/// archive -> kPt, a little-endian u64 header length followed by '{' ->
/// kSafetensors. InvalidArgument for the legacy formats of PyTorch < 1.6
/// ("unsupported legacy format ...": a tar archive or a bare pickle stream)
/// and for anything else.
absl::StatusOr<Format> DetectFormat(absl::Span<const uint8_t> file);

/// The format an output file name asks for: ".pt", ".pth", ".bin" -> kPt;
/// ".safetensors" -> kSafetensors; kUnknown otherwise.
Format FormatFromFileName(absl::string_view path);

/// Limits applied while reading untrusted files.
struct ReadOptions {
  /// Most nodes in the resulting tree (shared Python objects count once per
  /// reference). Default: 1,000,000 (the server's default --max-tree-nodes).
  uint64_t max_nodes = 1'000'000;
  /// Most Python objects the unpickler may create. Default: 8,000,000.
  uint64_t max_objects = 8'000'000;
  /// Most bytes copied out of the file (non-contiguous views, compressed
  /// records, Python bytes objects). Default: 16 GiB.
  uint64_t max_copied_bytes = 16ull << 30;
  /// Check each zip record's CRC-32 (torch.save writes them). Default: true.
  bool verify_crc = true;
  /// Called with each range of the file the reader has finished reading (a
  /// record whose CRC it checked), so that a caller reading a memory mapping
  /// can drop those pages (MappedFile::DropPages); spans into them stay
  /// valid. Default: none.
  std::function<void(absl::Span<const uint8_t>)> done_with;
};

/// A checkpoint read from a file.
struct ImportedCheckpoint {
  Format format = Format::kUnknown;
  /// The value tree; tensor and bytes nodes have data.size set and no chunks.
  Tree tree;
  /// bytes[i]: node i's data (empty for nodes without data). Points into the
  /// file given to ReadCheckpoint, or into `owned`.
  std::vector<absl::Span<const uint8_t>> bytes;
  /// Metadata of the file (safetensors' __metadata__).
  std::map<std::string, std::string> metadata;
  /// Buffers for data that could not point into the file.
  std::deque<std::string> owned;
  /// Bytes in `owned`.
  uint64_t copied_bytes = 0;
};

/// Reads a checkpoint file held in memory (typically mmap'd); the result's
/// spans point into `file`, which must outlive it. InvalidArgument naming
/// the problem for a malformed or unsupported file (a global other than the
/// few torch.save uses: "unsupported global 'os.system' ..."), DataLoss for a
/// CRC mismatch. Never executes anything from the file.
absl::StatusOr<ImportedCheckpoint> ReadCheckpoint(absl::Span<const uint8_t> file,
                                                  const ReadOptions& options);

/// Where a writer puts bytes: positioned writes (pwrite-like). The file's
/// final size is the largest offset written.
class OutputFile {
 public:
  virtual ~OutputFile() = default;
  /// Writes `bytes` at `offset`.
  virtual absl::Status WriteAt(uint64_t offset, absl::string_view bytes) = 0;
};

/// Writes one checkpoint file as its data streams in. Not thread-safe.
class CheckpointWriter {
 public:
  virtual ~CheckpointWriter() = default;
  /// A piece of node `node`'s data at `offset` within the node's bytes.
  /// Pieces come in node order with increasing offsets, every byte once (the
  /// LoadSink::OnData contract). InvalidArgument otherwise.
  virtual absl::Status Write(size_t node, uint64_t offset, absl::string_view bytes) = 0;
  /// Writes what remains (headers, directory). FailedPrecondition if some
  /// data never arrived.
  virtual absl::Status Finish() = 0;
};

/// Options of the writers.
struct WriteOptions {
  /// safetensors: the __metadata__ map. Default: empty, which writes
  /// {"format": "pt"} as safetensors.torch.save_model does.
  std::map<std::string, std::string> metadata;
};

/// A writer of `format` for `tree` into `out` (kept, not owned). Checks up
/// front that the tree fits the format: InvalidArgument naming the first
/// node that does not (e.g. a scalar in a safetensors export, a dtype the
/// format lacks, a string that is not UTF-8).
absl::StatusOr<std::unique_ptr<CheckpointWriter>> NewCheckpointWriter(Format format,
                                                                      const Tree& tree,
                                                                      OutputFile* out,
                                                                      const WriteOptions& options);

}  // namespace ckpt::interop

#endif  // CKPT_INTEROP_CHECKPOINT_H_
