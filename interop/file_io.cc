#include "interop/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"

namespace ckpt::interop {
namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  return ErrnoStatus(errno, absl::StrCat(what, " ", path));
}

}  // namespace

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", path);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    absl::Status status = Errno("cannot stat", path);
    close(fd);
    return status;
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  auto file = std::unique_ptr<MappedFile>(new MappedFile);
  file->size_ = static_cast<size_t>(st.st_size);
  if (file->size_ > 0) {
    void* data = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data == MAP_FAILED) {
      absl::Status status = Errno("cannot mmap", path);
      close(fd);
      return status;
    }
    file->data_ = data;
    // Read front to back, once: let the kernel read ahead and drop pages.
    madvise(data, file->size_, MADV_SEQUENTIAL);
  }
  close(fd);
  return file;
}

void MappedFile::DropPages(absl::Span<const uint8_t> range) const {
  const uintptr_t base = reinterpret_cast<uintptr_t>(data_);
  uintptr_t begin = reinterpret_cast<uintptr_t>(range.data());
  uintptr_t end = begin + range.size();
  if (data_ == nullptr || begin < base || end > base + size_ || begin >= end) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  begin = begin / page * page;  // the mapping starts on a page
  end =
      std::min<uintptr_t>((end + page - 1) / page * page, (base + size_ + page - 1) / page * page);
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) munmap(data_, size_);
}

absl::StatusOr<std::unique_ptr<AtomicFileOutput>> AtomicFileOutput::Create(
    const std::string& path) {
  auto out = std::unique_ptr<AtomicFileOutput>(new AtomicFileOutput);
  out->path_ = path;
  out->temp_ = absl::StrCat(path, ".ckpt-partial-", getpid());
  out->fd_ = open(out->temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out->fd_ < 0) return Errno("cannot create", out->temp_);
  return out;
}

AtomicFileOutput::~AtomicFileOutput() {
  if (fd_ >= 0) {
    close(fd_);
    unlink(temp_.c_str());
  }
}

absl::Status AtomicFileOutput::WriteAt(uint64_t offset, absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = pwrite(fd_, bytes.data(), bytes.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("writing ", temp_));
    }
    bytes.remove_prefix(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFileOutput::Commit() {
  if (fsync(fd_) != 0) return Errno("cannot sync", temp_);
  if (close(fd_) != 0) {
    fd_ = -1;
    unlink(temp_.c_str());
    return Errno("cannot close", temp_);
  }
  fd_ = -1;
  if (rename(temp_.c_str(), path_.c_str()) != 0) {
    absl::Status status = Errno("cannot rename into", path_);
    unlink(temp_.c_str());
    return status;
  }
  return absl::OkStatus();
}

absl::Status StringOutput::WriteAt(uint64_t offset, absl::string_view bytes) {
  if (offset + bytes.size() > data_.size()) data_.resize(offset + bytes.size());
  data_.replace(offset, bytes.size(), bytes.data(), bytes.size());
  return absl::OkStatus();
}

}  // namespace ckpt::interop
