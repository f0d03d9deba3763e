// ZipLayout (the writer's codec) against ZipReader (minizip), including
// zip64 on a sparse file past 4 GiB.

#include "interop/zip.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdlib>

#include "tests/interop/test_util.h"

namespace ckpt::interop {
namespace {

using ::testing::HasSubstr;
using testing::MakeZip;
using testing::Span;

TEST(Zip, LayoutIsReadBackWithAlignedData) {
  const std::string a = "hello";
  const std::string b(1000, 'b');
  const std::string zip = MakeZip({{"archive/a", a}, {"archive/data/0", b}, {"archive/e", ""}});
  auto reader = ZipReader::Open(Span(zip));
  ASSERT_TRUE(reader.ok()) << reader.status();
  ASSERT_EQ(reader->entries().size(), 3u);
  for (const ZipEntry& e : reader->entries()) {
    EXPECT_TRUE(e.stored);
    EXPECT_EQ(e.data_offset % ZipLayout::kAlignment, 0u) << e.name;
  }
  const ZipEntry* e = reader->Find("archive/data/0");
  ASSERT_NE(e, nullptr);
  auto data = reader->StoredData(*e, true);
  ASSERT_TRUE(data.ok());
  EXPECT_EQ(testing::Str(*data), b);
  EXPECT_EQ(data->data(), Span(zip).data() + e->data_offset);  // in place
  EXPECT_EQ(*reader->Read(*reader->Find("archive/a"), 100), a);
  EXPECT_EQ(reader->Find("missing"), nullptr);
}

TEST(Zip, CrcMismatchIsDataLoss) {
  std::string zip = MakeZip({{"x/data/0", std::string(100, 'a')}});
  auto reader = ZipReader::Open(Span(zip));
  ASSERT_TRUE(reader.ok());
  zip[reader->entries()[0].data_offset + 10] = 'b';
  auto data = reader->StoredData(reader->entries()[0], true);
  EXPECT_EQ(data.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(data.status().ToString(), HasSubstr("'x/data/0' is corrupt (CRC-32 mismatch)"));
  EXPECT_TRUE(reader->StoredData(reader->entries()[0], false).ok());
}

TEST(Zip, TruncatedArchiveIsRefused) {
  const std::string zip = MakeZip({{"x/data.pkl", std::string(300, 'p')}});
  for (size_t cut : {size_t{0}, size_t{10}, zip.size() / 2, zip.size() - 1}) {
    auto reader = ZipReader::Open(Span(zip.substr(0, cut)));
    EXPECT_FALSE(reader.ok()) << cut;
  }
  EXPECT_THAT(ZipReader::Open(Span(zip.substr(0, zip.size() / 2))).status().ToString(),
              HasSubstr("not a readable zip archive"));
}

TEST(Zip, DataPastTheEndIsRefused) {
  // Central directory claims 1 MB of data for the record.
  std::string zip = MakeZip({{"x/data/0", "abcd"}});
  const size_t cd = zip.find("PK\x01\x02");
  ASSERT_NE(cd, std::string::npos);
  for (size_t at : {size_t{18}, size_t{22}, cd + 20, cd + 24}) {  // both sizes, both headers
    zip[at + 2] = 0x10;
  }
  auto reader = ZipReader::Open(Span(zip));
  ASSERT_FALSE(reader.ok());
  EXPECT_THAT(reader.status().ToString(), HasSubstr("past the end of the file"));
}

TEST(Zip, DeflatedRecordsAreInflated) {
  const std::string text(5000, 'z');
  std::string deflated(10000, '\0');
  z_stream z{};
  ASSERT_EQ(deflateInit2(&z, 6, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  z.avail_in = text.size();
  z.next_out = reinterpret_cast<Bytef*>(deflated.data());
  z.avail_out = deflated.size();
  ASSERT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  deflated.resize(z.total_out);
  deflateEnd(&z);
  // A stored record, then patch its headers to method 8 with the deflated data.
  ZipLayout layout;
  layout.Add("x/data.pkl", deflated.size(), deflated.size());
  layout.SetCrc(0, Crc32(0, text));
  std::string zip = layout.LocalHeader(0) + deflated + layout.CentralDirectory();
  auto patch = [&](size_t at, uint32_t v, int n) {
    for (int i = 0; i < n; ++i) zip[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
  };
  const size_t cd = zip.find("PK\x01\x02");
  patch(8, 8, 2);             // local: method
  patch(22, text.size(), 4);  // local: uncompressed size
  patch(cd + 10, 8, 2);       // central: method
  patch(cd + 24, text.size(), 4);
  auto reader = ZipReader::Open(Span(zip));
  ASSERT_TRUE(reader.ok()) << reader.status();
  const ZipEntry& e = reader->entries()[0];
  EXPECT_FALSE(e.stored);
  EXPECT_EQ(*reader->Read(e, 1 << 20), text);
  EXPECT_THAT(reader->Read(e, 100).status().ToString(), HasSubstr("max 100"));
  EXPECT_FALSE(reader->StoredData(e, true).ok());
}

TEST(Zip, Crc32CombineMatchesOnePass) {
  const std::string a = "The quick brown fox", b = " jumps over the lazy dog";
  EXPECT_EQ(Crc32Combine(Crc32(0, a), Crc32(0, b), b.size()), Crc32(0, a + b));
}

// CRC-32 of n zero bytes, by doubling.
uint32_t ZerosCrc(uint64_t n) {
  uint32_t result = 0;
  uint64_t have = 0;
  uint32_t block = Crc32(0, std::string(1, '\0'));
  uint64_t block_len = 1;
  while (n > 0) {
    if (n & 1) {
      result = have == 0 ? block : Crc32Combine(result, block, block_len);
      have += block_len;
    }
    block = Crc32Combine(block, block, block_len);
    block_len *= 2;
    n >>= 1;
  }
  return result;
}

TEST(Zip, Zip64PastFourGiBOnASparseFile) {
  // Records "a" (small), "big" (5 GiB of zeros, never written: a hole) and
  // "after", whose header lies past 4 GiB: zip64 sizes and offsets.
  const uint64_t big = 5ull << 30;
  ZipLayout layout;
  layout.Add("x/a", 3, 3);
  layout.Add("x/big", big, big);
  layout.Add("x/after", 5, 5);
  layout.SetCrc(0, Crc32(0, "abc"));
  layout.SetCrc(1, ZerosCrc(big));
  layout.SetCrc(2, Crc32(0, "after"));
  char path[] = "/tmp/ckpt-zip64-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  struct Remove {
    const char* path;
    ~Remove() { unlink(path); }
  } remove{path};
  auto write = [&](uint64_t off, const std::string& s) {
    ASSERT_EQ(pwrite(fd, s.data(), s.size(), off), static_cast<ssize_t>(s.size()));
  };
  for (size_t i = 0; i < 3; ++i) write(layout.header_offset(i), layout.LocalHeader(i));
  write(layout.data_offset(0), "abc");
  write(layout.data_offset(2), "after");
  write(layout.end_of_records(), layout.CentralDirectory());
  close(fd);
  {
    auto file = MappedFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    auto reader = ZipReader::Open((*file)->bytes());
    ASSERT_TRUE(reader.ok()) << reader.status();
    ASSERT_EQ(reader->entries().size(), 3u);
    EXPECT_EQ(reader->Find("x/big")->size, big);
    EXPECT_EQ(reader->Find("x/big")->data_offset, layout.data_offset(1));
    const ZipEntry* after = reader->Find("x/after");
    EXPECT_GT(after->data_offset, 1ull << 32);
    EXPECT_EQ(testing::Str(*reader->StoredData(*after, true)), "after");
  }
}

TEST(Zip, ManyRecordsUseZip64EndRecords) {
  std::vector<std::pair<std::string, std::string>> records;
  for (int i = 0; i < 70000; ++i) records.emplace_back("x/data/" + std::to_string(i), "");
  const std::string zip = MakeZip(records);
  auto reader = ZipReader::Open(Span(zip));
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(reader->entries().size(), 70000u);
}

}  // namespace
}  // namespace ckpt::interop
