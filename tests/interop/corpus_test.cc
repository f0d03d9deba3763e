// Malformed files, each refused with a clear error and none crashing (this
// suite also runs under AddressSanitizer + UndefinedBehaviorSanitizer).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "interop/checkpoint.h"
#include "interop/zip.h"
#include "tests/interop/test_util.h"

namespace ckpt::interop {
namespace {

using ::testing::HasSubstr;
using testing::MakeZip;
using testing::Span;

std::string Golden() { return testing::ReadWholeFile(testing::DataDir() + "/torch2.pt"); }

// The golden file's records with `name` replaced (or removed when empty).
std::string WithRecord(const std::string& name, const std::string& data, bool remove = false) {
  auto records = testing::Unzip(Golden());
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& [n, d] : records) {
    if (n == name) {
      if (!remove) out.emplace_back(n, data);
    } else {
      out.emplace_back(n, d);
    }
  }
  return MakeZip(out);
}

std::string PickleZip(const std::string& pickle,
                      std::vector<std::pair<std::string, std::string>> more = {}) {
  more.insert(more.begin(), {"archive/data.pkl", pickle});
  return MakeZip(more);
}

std::string Safetensors(const std::string& header, const std::string& data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + data;
}

struct Case {
  const char* name;
  std::string file;
  absl::StatusCode code;
  const char* error;
};

class Corpus : public ::testing::TestWithParam<Case> {};

TEST_P(Corpus, RefusedWithAClearError) {
  auto out = ReadCheckpoint(Span(GetParam().file), {});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), GetParam().code) << out.status();
  EXPECT_THAT(out.status().ToString(), HasSubstr(GetParam().error));
}

// A string literal with its embedded NULs.
template <size_t N>
std::string B(const char (&s)[N]) {
  return std::string(s, N - 1);
}

const std::string kTensor =
    B("\200\002"
      "ctorch._utils\n_rebuild_tensor_v2\n((X\007\000\000\000storage"
      "ctorch\nFloatStorage\nX\001\000\000\0000X\003\000\000\000cpuK\006tQ");

std::vector<Case> Cases() {
  const std::string golden = Golden();
  const auto inv = absl::StatusCode::kInvalidArgument;
  std::string flipped = golden;
  {
    auto zip = ZipReader::Open(Span(golden));
    flipped[zip->Find("torch2/data/0")->data_offset] ^= 1;
  }
  std::string tar(1024, '\0');
  tar.replace(0, 8, "data.pkl");
  tar.replace(257, 5, "ustar");
  return {
      {"TruncatedZip", golden.substr(0, golden.size() / 2), inv, "not a readable zip archive"},
      {"TruncatedAtEnd", golden.substr(0, golden.size() - 3), inv, "not a readable zip archive"},
      {"EmptyFile", "", inv, "empty file"},
      {"Garbage", std::string(100, 'g'), inv, "unrecognized file format"},
      {"LegacyTar", tar, inv, "unsupported legacy format: a tar archive"},
      {"LegacyPickle", B("\200\002\212\012\154\374\234\106\371\040\152\250\120\031."), inv,
       "unsupported legacy format: a bare pickle stream"},
      {"BadPickle", WithRecord("torch2/data.pkl", "\200\002garbage"), inv,
       "torch2/data.pkl: pickle offset 2"},
      {"OsSystem",
       PickleZip(B("\200\002"
                   "cos\nsystem\nX\006\000\000\000rm -rfR.")),
       inv, "unsupported global 'os.system'"},
      {"BuiltinsEval",
       PickleZip(B("\200\002"
                   "cbuiltins\neval\nX\001\000\000\0001\205R.")),
       inv, "unsupported global 'builtins.eval'"},
      {"Subprocess",
       PickleZip(B("\200\004\225\025\000\000\000\000\000\000\000\214\012subprocess"
                   "\214\005Popen\223.")),
       inv, "unsupported global 'subprocess.Popen'"},
      {"ShapeOverflow",
       PickleZip(kTensor + B("K\000\212\005\000\000\000\000\001\212\005\000\000\000\000\001"
                             "\206K\001K\001\206\211}tR."),
                 {{"archive/data/0", std::string(24, 'x')}}),
       inv, "overflows the element count"},
      {"StorageOffsetPastEnd",
       PickleZip(kTensor + B("J\000\000\000\001K\001\205K\001\205\211}tR."),
                 {{"archive/data/0", std::string(24, 'x')}}),
       inv, "reaches past the end of its storage of 6 elements"},
      {"StorageRecordTooShort",
       PickleZip(kTensor + B("K\000K\006\205K\001\205\211}tR."),
                 {{"archive/data/0", std::string(20, 'x')}}),
       inv, "holds 20 bytes but its storage of 6 float32 needs 24"},
      {"StorageRecordMissing", PickleZip(kTensor + B("K\000K\006\205K\001\205\211}tR.")), inv,
       "storage '0' has no record 'archive/data/0'"},
      {"StorageNumelOverflow",
       PickleZip(B("\200\002"
                   "ctorch._utils\n_rebuild_tensor_v2\n((X\007\000\000\000storage"
                   "ctorch\nFloatStorage\nX\001\000\000\0000X\003\000\000\000cpu"
                   "\212\010\377\377\377\377\377\377\377\077tQK\000K\001\205K\001\205\211}tR."),
                 {{"archive/data/0", std::string(24, 'x')}}),
       inv, "too large"},
      {"CorruptData", flipped, absl::StatusCode::kDataLoss, "CRC-32 mismatch"},
      {"NoDataPkl", WithRecord("torch2/data.pkl", "", true), inv, "not a torch.save checkpoint"},
      {"TorchScript",
       MakeZip({{"m/data.pkl", "\200\002N."},
                {"m/constants.pkl", "\200\002)."},
                {"m/code/__torch__.py", "x"}}),
       inv, "TorchScript archive"},
      {"BigEndian", WithRecord("torch2/byteorder", "big"), inv, "unsupported byte order 'big'"},
      {"SafetensorsOverlap",
       Safetensors(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                   R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                   std::string(6, 'x')),
       inv, "overlap"},
      {"SafetensorsOutOfRange",
       Safetensors(R"({"a":{"dtype":"U8","shape":[9],"data_offsets":[0,9]}})", std::string(6, 'x')),
       inv, "out of range"},
      {"SafetensorsOversizedHeader", B("\001\341\365\005\000\000\000\000{"), inv,
       "(max 100000000)"},
      {"SafetensorsHeaderPastEnd", B("\100\000\000\000\000\000\000\000{\"a\":"), inv,
       "but the file has only"},
  };
}

INSTANTIATE_TEST_SUITE_P(Malformed, Corpus, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// Every prefix of real files: always an error, never a crash.
TEST(CorpusSweep, EveryTruncationIsAnError) {
  testing::Builder b;
  b.Dict(2).Tensor(std::string("w"), DType::kFloat32, {5}).Bytes("\001\377", std::string("b"));
  for (const std::string& file :
       {Golden(), testing::ReadWholeFile(testing::DataDir() + "/torch1.pt"),
        testing::ReadWholeFile(testing::DataDir() + "/reference.safetensors"),
        *testing::WriteFile(Format::kSafetensors, testing::Builder().Dict(1).Tensor(
                                                      std::string("w"), DType::kFloat32, {5})),
        *testing::WriteFile(Format::kPt, b)}) {
    ASSERT_TRUE(ReadCheckpoint(Span(file), {}).ok());
    for (size_t cut = 0; cut < file.size(); ++cut) {
      auto out = ReadCheckpoint(Span(file.substr(0, cut)), {});
      EXPECT_FALSE(out.ok()) << "prefix of " << cut << " bytes";
    }
  }
}

// Every single-byte corruption of data.pkl: an error or a valid tree, never
// a crash.
TEST(CorpusSweep, EveryPickleByteFlipIsHandled) {
  auto records = testing::Unzip(Golden());
  size_t pkl = 0;
  while (records[pkl].first != "torch2/data.pkl") ++pkl;
  const std::string original = records[pkl].second;
  int errors = 0;
  for (size_t i = 0; i < original.size(); ++i) {
    for (uint8_t x : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xff}}) {
      records[pkl].second = original;
      records[pkl].second[i] ^= x;
      const std::string file = MakeZip(records);
      auto out = ReadCheckpoint(Span(file), {});
      if (!out.ok()) {
        ++errors;
        EXPECT_FALSE(out.status().message().empty());
      } else {
        EXPECT_TRUE(testing::ValidateImported(*out).ok()) << testing::ValidateImported(*out);
      }
    }
  }
  EXPECT_GT(errors, 0);
}

}  // namespace
}  // namespace ckpt::interop
