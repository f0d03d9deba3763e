// The .pt reader on files written by PyTorch 1.13 and 2.x, and the .pt
// writer read back by the reader.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "interop/pickle.h"
#include "interop/torch_pt.h"
#include "tests/interop/test_util.h"
#include "tests/testing/tree_matchers.h"

namespace ckpt::interop {
namespace {

using testing::Builder;
using ::testing::HasSubstr;
using testing::Span;

std::string Key(const Node& n) {
  if (const auto* s = std::get_if<std::string>(&n.key)) return *s;
  if (const auto* i = std::get_if<int64_t>(&n.key)) return "#" + std::to_string(*i);
  return "";
}

template <typename T>
std::vector<T> Values(absl::Span<const uint8_t> bytes) {
  std::vector<T> v(bytes.size() / sizeof(T));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
  return v;
}

class GoldenPt : public ::testing::TestWithParam<const char*> {};

// tests/interop/make_golden.py wrote these with torch.save.
TEST_P(GoldenPt, ReadsEveryValue) {
  const std::string file = testing::ReadWholeFile(testing::DataDir() + "/" + GetParam());
  ASSERT_FALSE(file.empty());
  auto out = ReadCheckpoint(Span(file), {});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->format, Format::kPt);
  const Tree& t = out->tree;
  ASSERT_EQ(t.size(), 19u);
  std::vector<std::string> keys;
  for (const Node& n : t) keys.push_back(Key(n));
  EXPECT_EQ(keys, (std::vector<std::string>{"", "model", "fc.weight", "fc.bias",
                                            "bn.num_batches_tracked", "view", "base", "list", "",
                                            "tuple", "", "", "", "", "", "", "", "#7", "param"}));
  EXPECT_EQ(t[1].kind, NodeKind::kDict);
  EXPECT_EQ(t[1].size, 3u);
  EXPECT_EQ(t[2].tensor.dtype, DType::kFloat32);
  EXPECT_EQ(t[2].tensor.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(Values<float>(out->bytes[2]), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(Values<float>(out->bytes[3]), (std::vector<float>{0.5, -0.5}));
  EXPECT_EQ(t[4].tensor.dtype, DType::kInt64);
  EXPECT_TRUE(t[4].tensor.shape.empty());
  EXPECT_EQ(Values<int64_t>(out->bytes[4]), std::vector<int64_t>{7});
  // The view base[1:, ::2] comes out contiguous; base is whole.
  EXPECT_EQ(t[5].tensor.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(Values<int16_t>(out->bytes[5]), (std::vector<int16_t>{4, 6, 8, 10}));
  EXPECT_EQ(Values<int16_t>(out->bytes[6]).size(), 12u);
  EXPECT_EQ(Values<int16_t>(out->bytes[6])[11], 11);
  EXPECT_EQ(t[7].kind, NodeKind::kList);
  EXPECT_EQ(t[8].int_value, 1);
  EXPECT_EQ(t[9].kind, NodeKind::kTuple);
  EXPECT_EQ(t[10].float_value, 1.5);
  EXPECT_EQ(t[11].kind, NodeKind::kNone);
  EXPECT_TRUE(t[12].bool_value);
  EXPECT_EQ(t[13].string_value, "s\xc3\xa9");
  EXPECT_EQ(t[14].int_value, int64_t{1} << 40);
  EXPECT_EQ(t[15].int_value, -3);
  EXPECT_EQ(t[16].kind, NodeKind::kBytes);
  EXPECT_EQ(testing::Str(out->bytes[16]), std::string("\x00\xff", 2));
  EXPECT_EQ(t[17].tensor.dtype, DType::kBFloat16);
  EXPECT_EQ(t[18].tensor.dtype, DType::kFloat32);
  EXPECT_TRUE(t[18].tensor.requires_grad);
  EXPECT_FALSE(t[2].tensor.requires_grad);
  for (const Node& n : t) {
    if (n.kind == NodeKind::kTensor) {
      EXPECT_EQ(n.tensor.device, "cpu");
    }
  }
  EXPECT_TRUE(testing::ValidateImported(*out).ok()) << testing::ValidateImported(*out);
}

INSTANTIATE_TEST_SUITE_P(Torch, GoldenPt, ::testing::Values("torch1.pt", "torch2.pt"));

// Every kind of node, every dtype, odd piece sizes.
Builder Everything() {
  Builder b;
  b.Dict(9)
      .Int(5, std::string("epoch"))
      .Float(0.25, std::string("loss"))
      .Dict(15, std::string("tensors"));
  const DType dtypes[] = {DType::kFloat32, DType::kFloat64, DType::kFloat16,   DType::kBFloat16,
                          DType::kInt8,    DType::kInt16,   DType::kInt32,     DType::kInt64,
                          DType::kUInt8,   DType::kBool,    DType::kComplex64, DType::kComplex128,
                          DType::kUInt16,  DType::kUInt32,  DType::kUInt64};
  for (DType d : dtypes) b.Tensor(std::string(DTypeName(d)), d, {2, 3});
  b.Dict(2, std::string("optimizer"))
      .Dict(1, std::string("state"))
      .Dict(2, int64_t{0})
      .Tensor(std::string("step"), DType::kFloat32, {})
      .Tensor(std::string("exp_avg"), DType::kFloat32, {0, 3}, "", "cuda:1")
      .List(1, std::string("param_groups"))
      .Dict(3)
      .Float(1e-3, std::string("lr"))
      .Tuple(2, std::string("betas"))
      .Float(0.9)
      .Float(0.999)
      .List(2, std::string("params"))
      .Int(0)
      .Int(-(int64_t{1} << 62))
      .Tuple(0, std::string("empty tuple"))
      .List(0, std::string("empty list"))
      .Dict(0, std::string("empty dict"))
      .Tuple(4, std::string("mixed"))
      .None()
      .Bool(false)
      .Str("\xe2\x82\xac uro")
      .Bytes(std::string("\x00\x7f\x80\xff binary", 12))
      .Dict(3, std::string("misc"))
      .Bytes("", std::string("empty bytes"))
      .Tensor(std::string("param"), DType::kFloat32, {4}, "", "cuda:0", true)
      .Float(std::numeric_limits<double>::quiet_NaN(), int64_t{-7});
  return b;
}

// The tree equals the builder's, node by node (tests/testing/tree_matchers.h),
// and so do the bytes of every node.
void ExpectSameTree(const Builder& want, const ImportedCheckpoint& got) {
  ::ckpt::testing::ExpectSameTree(want.tree(), got.tree);
  ASSERT_EQ(got.tree.size(), want.tree().size());
  for (size_t i = 0; i < got.tree.size(); ++i) {
    SCOPED_TRACE("node " + std::to_string(i) + " " + Key(want.tree()[i]));
    EXPECT_EQ(testing::Str(got.bytes[i]), want.data()[i]);
  }
}

TEST(PtWriter, RoundTripsEveryKindOfValue) {
  const Builder b = Everything();
  for (size_t piece : {size_t{1}, size_t{7}, size_t{1} << 20}) {
    auto file = testing::WriteFile(Format::kPt, b, piece);
    ASSERT_TRUE(file.ok()) << file.status();
    auto out = ReadCheckpoint(Span(*file), {});
    ASSERT_TRUE(out.ok()) << out.status();
    ExpectSameTree(b, *out);
  }
}

TEST(PtWriter, LaysOutRecordsLikeTorchSave) {
  const Builder b = Everything();
  auto file = testing::WriteFile(Format::kPt, b);
  ASSERT_TRUE(file.ok());
  auto zip = ZipReader::Open(Span(*file));
  ASSERT_TRUE(zip.ok());
  std::vector<std::string> names;
  for (const ZipEntry& e : zip->entries()) {
    names.push_back(e.name);
    EXPECT_TRUE(e.stored);
    EXPECT_EQ(e.data_offset % 64, 0u) << e.name;
    EXPECT_TRUE(zip->StoredData(e, true).ok()) << e.name;
  }
  ASSERT_EQ(names.size(), 2u + 18u + 1u);
  EXPECT_EQ(names[0], "archive/byteorder");
  EXPECT_EQ(names[1], "archive/version");
  EXPECT_EQ(names[2], "archive/data/0");
  EXPECT_EQ(names.back(), "archive/data.pkl");
  EXPECT_EQ(testing::Str(*zip->StoredData(*zip->Find("archive/version"), true)), "3\n");
  // State dicts (all values tensors) are OrderedDicts, other dicts plain.
  const std::string pkl = testing::Str(*zip->StoredData(*zip->Find("archive/data.pkl"), true));
  EXPECT_EQ(pkl.substr(0, 3), std::string("\x80\x02}", 3));
  EXPECT_THAT(pkl, HasSubstr("ccollections\nOrderedDict\n"));
  EXPECT_THAT(pkl, HasSubstr("ctorch._utils\n_rebuild_parameter\n"));
  EXPECT_THAT(pkl, HasSubstr("ctorch.storage\nUntypedStorage\n"));
  EXPECT_THAT(pkl, HasSubstr("ctorch\nBFloat16Storage\n"));
}

TEST(PtWriter, RefusesBadInputAndIncompleteData) {
  EXPECT_THAT(testing::WriteFile(Format::kPt, Builder().Str("\xff")).status().ToString(),
              HasSubstr("not valid UTF-8"));
  Builder b;
  b.Dict(2).Tensor(std::string("a"), DType::kFloat32, {4}).Bytes("xyz", std::string("b"));
  StringOutput out;
  auto w = NewCheckpointWriter(Format::kPt, b.tree(), &out, {});
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE((*w)->Write(1, 0, "12345678").ok());
  EXPECT_THAT((*w)->Write(1, 0, "12345678").ToString(), HasSubstr("out-of-order"));
  EXPECT_THAT((*w)->Write(0, 0, "x").ToString(), HasSubstr("without data"));
  EXPECT_THAT((*w)->Finish().ToString(), HasSubstr("incomplete"));
}

}  // namespace
}  // namespace ckpt::interop
