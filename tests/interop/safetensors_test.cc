// The safetensors header parser, reader and writer.

#include "interop/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/interop/test_util.h"

namespace ckpt::interop {
namespace {

using testing::Builder;
using ::testing::HasSubstr;
using testing::Span;

std::string File(const std::string& header, const std::string& data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + data;
}

TEST(Safetensors, ParsesHeaderInFileOrderWithMetadata) {
  auto h = ParseSafetensorsHeader(R"({"z":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},)"
                                  R"("__metadata__":{"format":"pt","k":"v"},)"
                                  R"("a":{"dtype":"BF16","shape":[],"data_offsets":[6,8]},)"
                                  R"("e":{"dtype":"I64","shape":[0,4],"data_offsets":[8,8]}}   )",
                                  8);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->entries.size(), 3u);
  EXPECT_EQ(h->entries[0].name, "z");
  EXPECT_EQ(h->entries[0].dtype, DType::kFloat16);
  EXPECT_EQ(h->entries[1].name, "a");
  EXPECT_EQ(h->entries[1].shape, std::vector<int64_t>{});
  EXPECT_EQ(h->entries[2].shape, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(h->metadata.at("format"), "pt");
  EXPECT_EQ(h->metadata.at("k"), "v");
}

TEST(Safetensors, ReadsTheReferencePackagesFile) {
  // Written by safetensors.torch.save_file({"b": [1., 2.], "a": arange(3)}).
  const std::string file = testing::ReadWholeFile(testing::DataDir() + "/reference.safetensors");
  ASSERT_FALSE(file.empty());
  auto out = ReadCheckpoint(Span(file), {});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->format, Format::kSafetensors);
  ASSERT_EQ(out->tree.size(), 3u);
  EXPECT_EQ(out->metadata.at("format"), "pt");
  // The reference writer orders by alignment then name: a (I64) before b (F32).
  EXPECT_EQ(std::get<std::string>(out->tree[1].key), "a");
  EXPECT_EQ(out->tree[1].tensor.dtype, DType::kInt64);
  const std::string a = testing::Str(out->bytes[1]);
  EXPECT_EQ(a, std::string("\0\0\0\0\0\0\0\0\1\0\0\0\0\0\0\0\2\0\0\0\0\0\0\0", 24));
  EXPECT_EQ(std::get<std::string>(out->tree[2].key), "b");
  const float* b = reinterpret_cast<const float*>(out->bytes[2].data());
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], 2.0f);
}

std::string Dims65() {
  std::string s = "1";
  for (int i = 1; i < 65; ++i) s += ",1";
  return s;
}

struct BadHeader {
  const char* name;
  std::string json;
  uint64_t data_size;
  const char* error;
};
class SafetensorsRejects : public ::testing::TestWithParam<BadHeader> {};

TEST_P(SafetensorsRejects, WithAClearError) {
  auto h = ParseSafetensorsHeader(GetParam().json, GetParam().data_size);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(h.status().ToString(), HasSubstr(GetParam().error));
}

INSTANTIATE_TEST_SUITE_P(
    Corpus, SafetensorsRejects,
    ::testing::Values(
        BadHeader{"Overlap",
                  R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                  12, "tensors 'a' and 'b' overlap"},
        BadHeader{"OutOfRange", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8,
                  "data_offsets [0, 16] out of range (data section of 8 bytes)"},
        BadHeader{"Reversed", R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,2]}})", 8,
                  "out of range"},
        BadHeader{"SizeMismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8,
                  "shape and dtype make 12 bytes but data_offsets span 8"},
        BadHeader{"ShapeOverflow",
                  R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                  8, "overflows"},
        BadHeader{"NegativeDim", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", 8,
                  "non-negative integers"},
        BadHeader{"FloatDim", R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,0]}})", 8,
                  "non-negative integers"},
        BadHeader{"HugeOffset",
                  R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,99999999999999999999999]}})",
                  8, "data_offsets must be [begin, end]"},
        BadHeader{"UnknownDType", R"({"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})",
                  8, "unsupported dtype 'F8_E4M3'"},
        BadHeader{"NoDType", R"({"a":{"shape":[1],"data_offsets":[0,1]}})", 8, "no dtype"},
        BadHeader{"NotJson", R"({"a":)", 8, "not valid JSON"},
        BadHeader{"NotObject", R"([1,2])", 8, "not a JSON object"},
        BadHeader{"Duplicate",
                  R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                  R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                  8, "duplicate key"},
        BadHeader{"MetadataNotStrings", R"({"__metadata__":{"a":1}})", 8, "is not a string"},
        BadHeader{"DeepNesting", std::string(1000, '[') + std::string(1000, ']'), 8,
                  "nested too deeply"},
        BadHeader{"TooManyDims",
                  R"({"a":{"dtype":"U8","shape":[)" + Dims65() + R"(],"data_offsets":[0,1]}})", 8,
                  "65 dimensions (max 64)"}),
    [](const ::testing::TestParamInfo<BadHeader>& info) { return info.param.name; });

TEST(Safetensors, FileLevelErrors) {
  // A header length past the end, an oversized header, a too-short file.
  std::string truncated = File(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x");
  truncated.resize(20);
  EXPECT_THAT(ReadCheckpoint(Span(truncated), {}).status().ToString(),
              HasSubstr("but the file has only 12 after the length"));
  std::string huge = File("{}", "");
  huge[0] = 0;
  huge[4] = 1;  // 2^32
  EXPECT_THAT(ReadCheckpoint(Span(huge), {}).status().ToString(),
              HasSubstr("safetensors header of 4294967296 bytes (max 100000000)"));
  EXPECT_FALSE(ReadSafetensors(Span(std::string("abc")), {}).ok());
}

TEST(Safetensors, WriterRoundTripsAndFlattensNestedKeys) {
  Builder b;
  b.Dict(3)
      .Tensor(std::string("w"), DType::kFloat16, {3})
      .Dict(2, std::string("layer"))
      .Tensor(std::string("b"), DType::kBFloat16, {2, 2})
      .Tensor(int64_t{4}, DType::kUInt64, {1})
      .List(1, std::string("l"))
      .Tensor({}, DType::kBool, {0});
  WriteOptions options;
  options.metadata = {{"k", "v"}};
  auto file = testing::WriteFile(Format::kSafetensors, b, 3, options);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(DetectFormat(Span(*file)).value(), Format::kSafetensors);
  auto out = ReadCheckpoint(Span(*file), {});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->metadata, (std::map<std::string, std::string>{{"k", "v"}}));
  ASSERT_EQ(out->tree.size(), 5u);
  const char* keys[] = {"w", "layer/b", "layer/4", "l/0"};
  const size_t source[] = {1, 3, 4, 6};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(std::get<std::string>(out->tree[i + 1].key), keys[i]);
    EXPECT_EQ(out->tree[i + 1].tensor.dtype, b.tree()[source[i]].tensor.dtype);
    EXPECT_EQ(out->tree[i + 1].tensor.shape, b.tree()[source[i]].tensor.shape);
    EXPECT_EQ(testing::Str(out->bytes[i + 1]), b.data()[source[i]]) << keys[i];
  }
  // Header padded to 8 bytes; default metadata when none is given.
  EXPECT_EQ((file->size() - 8 - 6 - 8 - 8) % 8, 0u);
  auto plain = testing::WriteFile(Format::kSafetensors, Builder().Dict(0));
  ASSERT_TRUE(plain.ok());
  EXPECT_THAT(*plain, HasSubstr(R"({"__metadata__":{"format":"pt"}})"));
}

TEST(Safetensors, WriterRefusesWhatTheFormatCannotHold) {
  EXPECT_THAT(
      testing::WriteFile(Format::kSafetensors, Builder()
                                                   .Dict(2)
                                                   .Int(5, std::string("epoch"))
                                                   .Tensor(std::string("w"), DType::kFloat32, {1}))
          .status()
          .ToString(),
      HasSubstr("safetensors holds only tensors: 'epoch' is a int"));
  EXPECT_THAT(
      testing::WriteFile(Format::kSafetensors,
                         Builder().Dict(1).Tensor(std::string("c"), DType::kComplex128, {1}))
          .status()
          .ToString(),
      HasSubstr("safetensors has no complex128 dtype"));
  EXPECT_THAT(testing::WriteFile(Format::kSafetensors, Builder().Tensor({}, DType::kFloat32, {1}))
                  .status()
                  .ToString(),
              HasSubstr("root must be a dict"));
  EXPECT_THAT(
      testing::WriteFile(Format::kSafetensors, Builder()
                                                   .Dict(2)
                                                   .Tensor(std::string("a/b"), DType::kFloat32, {1})
                                                   .Dict(1, std::string("a"))
                                                   .Tensor(std::string("b"), DType::kFloat32, {1}))
          .status()
          .ToString(),
      HasSubstr("'a/b' appears twice"));
}

}  // namespace
}  // namespace ckpt::interop
