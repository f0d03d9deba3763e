#ifndef CKPT_INTEROP_ZIP_H_
#define CKPT_INTEROP_ZIP_H_

// Zip archives as torch.save writes them: STORED records (zip64 when large)
// whose data are used in place.
//
// ZipReader lists an archive held in memory (zip64 included), checking every
// size and offset against the file, and gives each record's data offset, so
// stored records are spans of the caller's mapping rather than copies. ZipLayout is the pure
// codec of the writer: it places records (data aligned to 64 bytes like
// PyTorch's writer) and encodes the local headers and the central directory
// once the CRCs are known, so a streaming writer can pwrite data first and
// headers last.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace ckpt::interop {

/// One record of an archive.
struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  ///< Where its (compressed) data begins in the file.
  uint64_t compressed_size = 0;
  uint64_t size = 0;  ///< Uncompressed size.
  uint32_t crc32 = 0;
  bool stored = false;  ///< Method 0: data is the record itself.
};

/// Reads the directory of a zip archive in memory. Thread-compatible.
class ZipReader {
 public:
  /// Lists every record of `file` (which must outlive the reader).
  /// InvalidArgument for a file that is not a readable zip archive, an
  /// encrypted record, duplicate names, or a record whose data lies outside
  /// the file.
  static absl::StatusOr<ZipReader> Open(absl::Span<const uint8_t> file);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  /// The record named `name`, or nullptr.
  const ZipEntry* Find(absl::string_view name) const;

  /// The data of a stored record, in place. With `verify_crc`, DataLoss if
  /// its CRC-32 does not match.
  absl::StatusOr<absl::Span<const uint8_t>> StoredData(const ZipEntry& entry,
                                                       bool verify_crc) const;
  /// The uncompressed data of any record (stored or deflated), copied;
  /// InvalidArgument if it is larger than `max_size`, DataLoss on a CRC or
  /// inflate error.
  absl::StatusOr<std::string> Read(const ZipEntry& entry, uint64_t max_size) const;

 private:
  absl::Span<const uint8_t> file_;
  std::vector<ZipEntry> entries_;
  absl::flat_hash_map<std::string, size_t> by_name_;
};

/// CRC-32 (zlib's) of `data`, continuing from `crc` (0 to start).
uint32_t Crc32(uint32_t crc, absl::string_view data);
/// CRC-32 of A followed by B from crc(A), crc(B) and B's length.
uint32_t Crc32Combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b);

/// Placement and encoding of a zip archive's headers. Records are laid out
/// one after the other in the order added, each as local header + data.
class ZipLayout {
 public:
  /// Data offsets are multiples of this (PyTorch's writer uses 64).
  static constexpr uint64_t kAlignment = 64;

  /// Adds a record of `size` bytes at the end; `max_size` (>= size) decides
  /// whether its local header carries zip64 sizes, so the size may still
  /// change with SetSize for the last record. Returns its index.
  size_t Add(std::string name, uint64_t size, uint64_t max_size);
  /// Sets the final size of the last record (<= the max_size it was added with).
  void SetSize(size_t index, uint64_t size);
  /// Sets a record's CRC-32 (before encoding its headers).
  void SetCrc(size_t index, uint32_t crc) { records_[index].crc = crc; }

  size_t size() const { return records_.size(); }
  uint64_t header_offset(size_t i) const { return records_[i].header_offset; }
  uint64_t data_offset(size_t i) const { return records_[i].data_offset; }
  uint64_t record_size(size_t i) const { return records_[i].size; }
  /// Where the central directory starts: the end of the last record.
  uint64_t end_of_records() const;

  /// The local header of record i (written at header_offset(i); ends exactly
  /// at data_offset(i)).
  std::string LocalHeader(size_t i) const;
  /// Central directory, zip64 end records when needed, end of central
  /// directory: written at end_of_records().
  std::string CentralDirectory() const;

 private:
  struct Record {
    std::string name;
    uint64_t size = 0;
    uint32_t crc = 0;
    bool zip64_local = false;
    uint64_t header_offset = 0;
    uint64_t data_offset = 0;
  };
  std::vector<Record> records_;
};

}  // namespace ckpt::interop

#endif  // CKPT_INTEROP_ZIP_H_
