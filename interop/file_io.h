#ifndef CKPT_INTEROP_FILE_IO_H_
#define CKPT_INTEROP_FILE_IO_H_

// Files for the readers and writers: a read-only memory mapping (the import
// path reads tensor bytes in place, so memory is page cache, not heap) and a
// pwrite-based OutputFile that is renamed into place only when complete.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "interop/checkpoint.h"

namespace ckpt::interop {

/// A read-only mapping of a whole file. Thread-safe to read.
class MappedFile {
 public:
  /// NotFound if the file cannot be opened, Unavailable on other I/O errors.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  absl::Span<const uint8_t> bytes() const { return {static_cast<const uint8_t*>(data_), size_}; }
  /// Drops the resident pages of `range` (within bytes()) from this process:
  /// they are read again from the page cache if touched later, so the
  /// process's memory stays bounded while it streams through a large file.
  void DropPages(absl::Span<const uint8_t> range) const;

 private:
  MappedFile() = default;
  void* data_ = nullptr;
  size_t size_ = 0;
};

/// Writes into a temporary file beside `path` (pwrite), renamed over `path`
/// by Commit(); destroyed without Commit(), it removes the temporary file, so
/// `path` is never left half written.
class AtomicFileOutput : public OutputFile {
 public:
  /// Unavailable if the temporary file cannot be created.
  static absl::StatusOr<std::unique_ptr<AtomicFileOutput>> Create(const std::string& path);
  ~AtomicFileOutput() override;

  absl::Status WriteAt(uint64_t offset, absl::string_view bytes) override;
  /// fsyncs, closes and renames the file into place.
  absl::Status Commit();

 private:
  AtomicFileOutput() = default;
  std::string path_;
  std::string temp_;
  int fd_ = -1;
};

/// An OutputFile in memory (tests, fuzzing).
class StringOutput : public OutputFile {
 public:
  absl::Status WriteAt(uint64_t offset, absl::string_view bytes) override;
  const std::string& data() const { return data_; }

 private:
  std::string data_;
};

}  // namespace ckpt::interop

#endif  // CKPT_INTEROP_FILE_IO_H_
