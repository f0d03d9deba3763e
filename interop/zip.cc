#include "interop/zip.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace ckpt::interop {
namespace {

constexpr uint64_t kMax32 = 0xffffffffu;

// Little-endian fields; callers check bounds with Has() first.
class Reader {
 public:
  Reader(absl::Span<const uint8_t> file, uint64_t offset) : file_(file), pos_(offset) {}
  bool Has(uint64_t n) const { return pos_ <= file_.size() && n <= file_.size() - pos_; }
  uint64_t Get(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t{file_[pos_ + i]} << (8 * i);
    pos_ += n;
    return v;
  }
  uint64_t pos() const { return pos_; }
  void Skip(uint64_t n) { pos_ += n; }

 private:
  absl::Span<const uint8_t> file_;
  uint64_t pos_;
};

absl::Status Corrupt(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("corrupt zip archive: ", what));
}

void Put16(std::string* out, uint64_t v) {
  out->push_back(static_cast<char>(v & 0xff));
  out->push_back(static_cast<char>((v >> 8) & 0xff));
}
void Put32(std::string* out, uint64_t v) {
  Put16(out, v & 0xffff);
  Put16(out, (v >> 16) & 0xffff);
}
void Put64(std::string* out, uint64_t v) {
  Put32(out, v & 0xffffffffu);
  Put32(out, v >> 32);
}

constexpr uint16_t kDosDate = (0 << 9) | (1 << 5) | 1;  // 1980-01-01, reproducible

}  // namespace

uint32_t Crc32(uint32_t crc, absl::string_view data) {
  // zlib's crc32 takes at most uInt bytes per call.
  while (!data.empty()) {
    const size_t n = std::min<size_t>(data.size(), 1u << 30);
    crc = static_cast<uint32_t>(
        crc32(crc, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(n)));
    data.remove_prefix(n);
  }
  return crc;
}

uint32_t Crc32Combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b) {
  return static_cast<uint32_t>(crc32_combine64(crc_a, crc_b, static_cast<z_off64_t>(length_b)));
}

// A reader of its own rather than minizip or libzip: Debian's minizip 1.1
// misreads zip64 fields on 64-bit Linux (it compares them with
// (unsigned long)-1), and libzip does not tell where a record's data starts,
// which is what lets stored tensors be used in place.
absl::StatusOr<ZipReader> ZipReader::Open(absl::Span<const uint8_t> file) {
  constexpr uint64_t kEocd = 22, kLocator = 20, kZip64Eocd = 56, kCentral = 46, kLocal = 30;
  // End of central directory: the last signature whose record (and comment)
  // fits in the file.
  if (file.size() < kEocd) {
    return absl::InvalidArgumentError(
        "not a readable zip archive (truncated? no end of central directory)");
  }
  uint64_t eocd = UINT64_MAX;
  const uint64_t lowest = file.size() >= kEocd + 0xffff ? file.size() - kEocd - 0xffff : 0;
  for (uint64_t p = file.size() - kEocd + 1; p-- > lowest;) {
    Reader r(file, p);
    if (r.Get(4) != 0x06054b50) continue;
    r.Skip(16);
    if (p + kEocd + r.Get(2) <= file.size()) {
      eocd = p;
      break;
    }
  }
  if (eocd == UINT64_MAX) {
    return absl::InvalidArgumentError(
        "not a readable zip archive (truncated? no end of central directory)");
  }
  Reader e(file, eocd + 4);
  const uint64_t disk = e.Get(2), cd_disk = e.Get(2);
  uint64_t entries_on_disk = e.Get(2), entries = e.Get(2);
  uint64_t cd_size = e.Get(4), cd_offset = e.Get(4);
  uint64_t cd_end_limit = eocd;
  // zip64: a locator right before the end record points at the zip64 end.
  if (eocd >= kLocator && Reader(file, eocd - kLocator).Get(4) == 0x07064b50) {
    Reader l(file, eocd - kLocator + 4);
    const uint64_t locator_disk = l.Get(4);
    const uint64_t zip64 = l.Get(8);
    if (locator_disk != 0 || zip64 > eocd - kLocator || eocd - kLocator - zip64 < kZip64Eocd) {
      return Corrupt("bad zip64 locator");
    }
    Reader z(file, zip64);
    if (z.Get(4) != 0x06064b50) return Corrupt("bad zip64 end of central directory");
    z.Skip(8 + 2 + 2);
    if (z.Get(4) != 0 || z.Get(4) != 0) return Corrupt("multi-disk archive");
    entries_on_disk = z.Get(8);
    entries = z.Get(8);
    cd_size = z.Get(8);
    cd_offset = z.Get(8);
    cd_end_limit = zip64;
  } else if (disk != 0 || cd_disk != 0) {
    return Corrupt("multi-disk archive");
  }
  if (entries != entries_on_disk) return Corrupt("multi-disk archive");
  if (cd_offset > cd_end_limit || cd_size > cd_end_limit - cd_offset) {
    return Corrupt("central directory lies outside the file (truncated?)");
  }
  if (entries > cd_size / kCentral) return Corrupt("more entries than the central directory holds");

  ZipReader reader;
  reader.file_ = file;
  Reader c(file, cd_offset);
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < entries; ++i) {
    if (c.pos() > cd_end || cd_end - c.pos() < kCentral || c.Get(4) != 0x02014b50) {
      return Corrupt(absl::StrCat("bad central directory entry ", i));
    }
    c.Skip(4);  // versions
    const uint64_t flags = c.Get(2), method = c.Get(2);
    c.Skip(4);  // time, date
    ZipEntry entry;
    entry.crc32 = static_cast<uint32_t>(c.Get(4));
    entry.compressed_size = c.Get(4);
    entry.size = c.Get(4);
    const uint64_t name_len = c.Get(2), extra_len = c.Get(2), comment_len = c.Get(2);
    uint64_t start_disk = c.Get(2);
    c.Skip(6);  // attributes
    uint64_t local = c.Get(4);
    if (cd_end - c.pos() < name_len + extra_len + comment_len) {
      return Corrupt(absl::StrCat("central directory entry ", i, " runs past its end"));
    }
    entry.name.assign(reinterpret_cast<const char*>(file.data() + c.pos()), name_len);
    c.Skip(name_len);
    // zip64 extra field: 64-bit values for those the header set to all ones,
    // in this order.
    const uint64_t extra_end = c.pos() + extra_len;
    while (c.pos() + 4 <= extra_end) {
      const uint64_t id = c.Get(2), len = c.Get(2);
      if (len > extra_end - c.pos()) return Corrupt("extra field runs past its entry");
      const uint64_t field_end = c.pos() + len;
      if (id == 0x0001) {
        for (uint64_t* v : {&entry.size, &entry.compressed_size, &local}) {
          if (*v != kMax32) continue;
          if (field_end - c.pos() < 8) return Corrupt("short zip64 extra field");
          *v = c.Get(8);
        }
        if (start_disk == 0xffff && field_end - c.pos() >= 4) start_disk = c.Get(4);
      }
      c.Skip(field_end - c.pos());
    }
    c.Skip(extra_end - c.pos() + comment_len);

    const std::string quoted = absl::StrCat("zip record '", entry.name.substr(0, 200), "'");
    if (flags & 1) return absl::InvalidArgumentError(quoted + " is encrypted");
    if (method != 0 && method != Z_DEFLATED) {
      return absl::InvalidArgumentError(absl::StrCat(quoted, " uses compression method ", method,
                                                     " (only stored and deflate are supported)"));
    }
    if (start_disk != 0) return Corrupt("multi-disk archive");
    entry.stored = method == 0;
    if (entry.stored && entry.size != entry.compressed_size) {
      return absl::InvalidArgumentError(quoted + ": stored record with two different sizes");
    }
    // The local header: same name and method; the data follows it.
    Reader h(file, local);
    if (!h.Has(kLocal) || h.Get(4) != 0x04034b50) {
      return absl::InvalidArgumentError(quoted + ": bad local header (truncated?)");
    }
    h.Skip(4);
    const uint64_t local_method = h.Get(2);
    h.Skip(16);
    const uint64_t local_name = h.Get(2), local_extra = h.Get(2);
    if (!h.Has(local_name) ||
        absl::string_view(reinterpret_cast<const char*>(file.data() + h.pos()), local_name) !=
            entry.name ||
        local_method != method) {
      return absl::InvalidArgumentError(quoted + ": local header disagrees with the directory");
    }
    entry.data_offset = h.pos() + local_name + local_extra;
    if (entry.data_offset > file.size() ||
        entry.compressed_size > file.size() - entry.data_offset) {
      return absl::InvalidArgumentError(absl::StrCat(
          quoted, ": data (", entry.compressed_size, " bytes at offset ", entry.data_offset,
          ") lies past the end of the file (", file.size(), " bytes; truncated?)"));
    }
    if (!reader.by_name_.emplace(entry.name, reader.entries_.size()).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate ", quoted));
    }
    reader.entries_.push_back(std::move(entry));
  }
  return reader;
}

const ZipEntry* ZipReader::Find(absl::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

absl::StatusOr<absl::Span<const uint8_t>> ZipReader::StoredData(const ZipEntry& entry,
                                                                bool verify_crc) const {
  if (!entry.stored) {
    return absl::InvalidArgumentError(absl::StrCat("zip record '", entry.name, "' is compressed"));
  }
  absl::Span<const uint8_t> data = file_.subspan(entry.data_offset, entry.size);
  if (verify_crc) {
    const uint32_t crc = Crc32(0, {reinterpret_cast<const char*>(data.data()), data.size()});
    if (crc != entry.crc32) {
      return absl::DataLossError(
          absl::StrCat("zip record '", entry.name, "' is corrupt (CRC-32 mismatch)"));
    }
  }
  return data;
}

absl::StatusOr<std::string> ZipReader::Read(const ZipEntry& entry, uint64_t max_size) const {
  if (entry.size > max_size) {
    return absl::InvalidArgumentError(absl::StrCat("zip record '", entry.name, "' is ", entry.size,
                                                   " bytes (max ", max_size, ")"));
  }
  if (entry.stored) {
    CKPT_ASSIGN_OR_RETURN(auto data, StoredData(entry, true));
    return std::string(reinterpret_cast<const char*>(data.data()), data.size());
  }
  std::string out(entry.size, '\0');
  z_stream z;
  std::memset(&z, 0, sizeof(z));
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK) return absl::InternalError("inflateInit2 failed");
  const uint8_t* in = file_.data() + entry.data_offset;
  uint64_t in_left = entry.compressed_size;
  uint64_t out_done = 0;
  int rc = Z_OK;
  while (rc == Z_OK) {
    const uInt in_n = static_cast<uInt>(std::min<uint64_t>(in_left, 1u << 30));
    const uInt out_n = static_cast<uInt>(std::min<uint64_t>(entry.size - out_done, 1u << 30));
    z.next_in = const_cast<Bytef*>(in);
    z.avail_in = in_n;
    z.next_out = reinterpret_cast<Bytef*>(out.data()) + out_done;
    z.avail_out = out_n;
    rc = inflate(&z, Z_NO_FLUSH);
    const uint64_t consumed = in_n - z.avail_in;
    const uint64_t produced = out_n - z.avail_out;
    in += consumed;
    in_left -= consumed;
    out_done += produced;
    if (rc == Z_OK && consumed == 0 && produced == 0) rc = Z_BUF_ERROR;
  }
  inflateEnd(&z);
  if (rc != Z_STREAM_END || out_done != entry.size) {
    return absl::DataLossError(absl::StrCat("zip record '", entry.name, "': corrupt deflate data"));
  }
  if (Crc32(0, out) != entry.crc32) {
    return absl::DataLossError(
        absl::StrCat("zip record '", entry.name, "' is corrupt (CRC-32 mismatch)"));
  }
  return out;
}

// ------------------------------------------------------------------ layout

size_t ZipLayout::Add(std::string name, uint64_t size, uint64_t max_size) {
  Record r;
  r.header_offset = end_of_records();
  r.zip64_local = std::max(size, max_size) >= kMax32;
  const uint64_t base =
      r.header_offset + 30 + name.size() + (r.zip64_local ? 20 : 0) + 4;  // + "FB" field
  r.data_offset = base + (kAlignment - base % kAlignment) % kAlignment;
  r.name = std::move(name);
  r.size = size;
  records_.push_back(std::move(r));
  return records_.size() - 1;
}

void ZipLayout::SetSize(size_t index, uint64_t size) { records_[index].size = size; }

uint64_t ZipLayout::end_of_records() const {
  if (records_.empty()) return 0;
  return records_.back().data_offset + records_.back().size;
}

std::string ZipLayout::LocalHeader(size_t i) const {
  const Record& r = records_[i];
  std::string extra;
  if (r.zip64_local) {
    Put16(&extra, 0x0001);
    Put16(&extra, 16);
    Put64(&extra, r.size);
    Put64(&extra, r.size);
  }
  const uint64_t pad = r.data_offset - (r.header_offset + 30 + r.name.size() + extra.size() + 4);
  extra.append("FB");
  Put16(&extra, pad);
  extra.append(pad, 'Z');
  std::string h;
  Put32(&h, 0x04034b50);
  Put16(&h, r.zip64_local ? 45 : 20);
  Put16(&h, 0);  // flags
  Put16(&h, 0);  // stored
  Put16(&h, 0);  // time
  Put16(&h, kDosDate);
  Put32(&h, r.crc);
  Put32(&h, r.zip64_local ? kMax32 : r.size);
  Put32(&h, r.zip64_local ? kMax32 : r.size);
  Put16(&h, r.name.size());
  Put16(&h, extra.size());
  h += r.name;
  h += extra;
  return h;
}

std::string ZipLayout::CentralDirectory() const {
  std::string cd;
  for (const Record& r : records_) {
    const bool big_size = r.size >= kMax32;
    const bool big_offset = r.header_offset >= kMax32;
    std::string extra;
    if (big_size || big_offset) {
      Put16(&extra, 0x0001);
      Put16(&extra, (big_size ? 16 : 0) + (big_offset ? 8 : 0));
      if (big_size) {
        Put64(&extra, r.size);
        Put64(&extra, r.size);
      }
      if (big_offset) Put64(&extra, r.header_offset);
    }
    const uint16_t version = (big_size || big_offset || r.zip64_local) ? 45 : 20;
    Put32(&cd, 0x02014b50);
    Put16(&cd, version);  // made by (MS-DOS attributes)
    Put16(&cd, version);  // needed
    Put16(&cd, 0);
    Put16(&cd, 0);
    Put16(&cd, 0);
    Put16(&cd, kDosDate);
    Put32(&cd, r.crc);
    Put32(&cd, big_size ? kMax32 : r.size);
    Put32(&cd, big_size ? kMax32 : r.size);
    Put16(&cd, r.name.size());
    Put16(&cd, extra.size());
    Put16(&cd, 0);  // comment
    Put16(&cd, 0);  // disk
    Put16(&cd, 0);  // internal attributes
    Put32(&cd, 0);  // external attributes
    Put32(&cd, big_offset ? kMax32 : r.header_offset);
    cd += r.name;
    cd += extra;
  }
  const uint64_t cd_offset = end_of_records();
  const uint64_t cd_size = cd.size();
  const uint64_t n = records_.size();
  if (n >= 0xffff || cd_offset >= kMax32 || cd_size >= kMax32) {
    const uint64_t zip64_eocd = cd_offset + cd_size;
    Put32(&cd, 0x06064b50);
    Put64(&cd, 44);
    Put16(&cd, 45);
    Put16(&cd, 45);
    Put32(&cd, 0);
    Put32(&cd, 0);
    Put64(&cd, n);
    Put64(&cd, n);
    Put64(&cd, cd_size);
    Put64(&cd, cd_offset);
    Put32(&cd, 0x07064b50);
    Put32(&cd, 0);
    Put64(&cd, zip64_eocd);
    Put32(&cd, 1);
  }
  Put32(&cd, 0x06054b50);
  Put16(&cd, 0);
  Put16(&cd, 0);
  Put16(&cd, std::min<uint64_t>(n, 0xffff));
  Put16(&cd, std::min<uint64_t>(n, 0xffff));
  Put32(&cd, std::min<uint64_t>(cd_size, kMax32));
  Put32(&cd, std::min<uint64_t>(cd_offset, kMax32));
  Put16(&cd, 0);
  return cd;
}

}  // namespace ckpt::interop
