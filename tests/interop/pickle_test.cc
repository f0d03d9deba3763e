// The restricted unpickler and the opcode encoder, on hand-written pickles.

#include "interop/pickle.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tests/interop/test_util.h"

namespace ckpt::interop {
namespace {

using ::testing::HasSubstr;

// A string literal with its embedded NULs.
template <size_t N>
std::string P(const char (&s)[N]) {
  return std::string(s, N - 1);
}

// A pickle's tree, with every storage resolved to `storage` bytes.
absl::StatusOr<ImportedCheckpoint> Decode(const std::string& pickle,
                                          const std::string& storage = std::string(64, 'x'),
                                          ReadOptions options = {}) {
  auto value = ParsePickle(pickle, {});
  if (!value.ok()) return value.status();
  ImportedCheckpoint out;
  absl::Status s = PickleToTree(
      *value,
      [&](const StorageRef& ref) -> absl::StatusOr<absl::Span<const uint8_t>> {
        auto need = StorageNumBytes(ref);
        if (!need.ok()) return need.status();
        if (*need > storage.size()) return absl::InvalidArgumentError("storage too small");
        return testing::Span(storage).subspan(0, *need);
      },
      options, &out);
  if (!s.ok()) return s;
  return out;
}

TEST(Pickle, ScalarsAndContainers) {
  // {'a': [1, 2.5], 3: (None, True, 'x'), 'b': b'\x00\xff'} as protocol 2.
  const std::string pkl =
      P("\200\002}q\000(X\001\000\000\000aq\001]q\002(K\001G@\004\000\000\000\000\000\000e"
        "K\003N\210X\001\000\000\000x\207X\001\000\000\000b"
        "c_codecs\nencode\nX\003\000\000\000\000\303\277"
        "X\006\000\000\000latin1\206Ru.");
  auto out = Decode(pkl);
  ASSERT_TRUE(out.ok()) << out.status();
  const Tree& t = out->tree;
  ASSERT_EQ(t.size(), 9u);
  EXPECT_EQ(t[0].kind, NodeKind::kDict);
  EXPECT_EQ(t[0].size, 3u);
  EXPECT_EQ(std::get<std::string>(t[1].key), "a");
  EXPECT_EQ(t[1].kind, NodeKind::kList);
  EXPECT_EQ(t[2].int_value, 1);
  EXPECT_EQ(t[3].float_value, 2.5);
  EXPECT_EQ(std::get<int64_t>(t[4].key), 3);
  EXPECT_EQ(t[4].kind, NodeKind::kTuple);
  EXPECT_EQ(t[5].kind, NodeKind::kNone);
  EXPECT_EQ(t[6].kind, NodeKind::kBool);
  EXPECT_TRUE(t[6].bool_value);
  EXPECT_EQ(t[7].string_value, "x");
  EXPECT_EQ(std::get<std::string>(t[8].key), "b");
  EXPECT_EQ(t[8].kind, NodeKind::kBytes);
  EXPECT_EQ(testing::Str(out->bytes[8]), P("\000\377"));
}

TEST(Pickle, SetItemReplacesAnExistingKeyInPlace) {
  // d = {}; d['a'] = 1; d['b'] = 2; d['a'] = 3  ->  {'a': 3, 'b': 2}
  auto out =
      Decode(P("\200\002}X\001\000\000\000aK\001sX\001\000\000\000bK\002s"
               "X\001\000\000\000aK\003s."));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->tree.size(), 3u);
  EXPECT_EQ(std::get<std::string>(out->tree[1].key), "a");
  EXPECT_EQ(out->tree[1].int_value, 3);
  EXPECT_EQ(out->tree[2].int_value, 2);
}

TEST(Pickle, MemoSharesObjectsAndTheTreeCopiesThem) {
  // l = [7]; [l, l]
  auto out = Decode(P("\200\002](]q\000K\007ah\000e."));
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->tree.size(), 5u);
  EXPECT_EQ(out->tree[2].int_value, 7);
  EXPECT_EQ(out->tree[4].int_value, 7);
}

TEST(Pickle, Longs) {
  struct Case {
    std::string bytes;
    int64_t value;
  } cases[] = {
      {P("\212\000"), 0},
      {P("\212\001\377"), -1},
      {P("\212\006\000\000\000\000\000\001"), int64_t{1} << 40},
      {P("\212\010\377\377\377\377\377\377\377\177"), std::numeric_limits<int64_t>::max()},
      {P("\212\010\000\000\000\000\000\000\000\200"), std::numeric_limits<int64_t>::min()},
      {P("\212\011\377\377\377\377\377\377\377\177\000"), std::numeric_limits<int64_t>::max()},
  };
  for (const Case& c : cases) {
    auto out = Decode(P("\200\002") + c.bytes + ".");
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->tree[0].int_value, c.value);
  }
  // 2**64 does not fit.
  auto big = Decode(P("\200\002\212\011\000\000\000\000\000\000\000\000\001."));
  EXPECT_THAT(big.status().ToString(), HasSubstr("does not fit in 64 bits"));
}

TEST(Pickle, TensorViewIsCopiedContiguously) {
  // _rebuild_tensor_v2(storage(int16, 12), offset 4, size (2, 2), stride (4, 2))
  // = base.reshape(3, 4)[1:, ::2] -> elements 4, 6, 8, 10.
  const std::string pkl =
      P("\200\002ctorch._utils\n_rebuild_tensor_v2\n((X\007\000\000\000storage"
        "ctorch\nShortStorage\nX\001\000\000\0000X\003\000\000\000cpuK\014tQ"
        "K\004K\002K\002\206K\004K\002\206\211ccollections\nOrderedDict\n)RtR.");
  std::string storage;
  for (int16_t i = 0; i < 12; ++i) storage.append(reinterpret_cast<const char*>(&i), 2);
  auto out = Decode(pkl, storage);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->tree.size(), 1u);
  const Node& t = out->tree[0];
  EXPECT_EQ(t.kind, NodeKind::kTensor);
  EXPECT_EQ(t.tensor.dtype, DType::kInt16);
  EXPECT_EQ(t.tensor.shape, (std::vector<int64_t>{2, 2}));
  const std::string got = testing::Str(out->bytes[0]);
  ASSERT_EQ(got.size(), 8u);
  const int16_t* v = reinterpret_cast<const int16_t*>(got.data());
  EXPECT_EQ(v[0], 4);
  EXPECT_EQ(v[1], 6);
  EXPECT_EQ(v[2], 8);
  EXPECT_EQ(v[3], 10);
  EXPECT_EQ(out->copied_bytes, 8u);
}

TEST(Pickle, ContiguousViewPointsIntoTheStorage) {
  // offset 4, size (2, 4), stride (4, 1): rows 1..2 of a [3, 4] storage.
  const std::string pkl =
      P("\200\002ctorch._utils\n_rebuild_tensor_v2\n((X\007\000\000\000storage"
        "ctorch\nShortStorage\nX\001\000\000\0000X\006\000\000\000cuda:1K\014tQ"
        "K\004K\002K\004\206K\004K\001\206\210ccollections\nOrderedDict\n)RtR.");
  std::string storage(24, '\0');
  auto out = Decode(pkl, storage);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->bytes[0].data(), testing::Span(storage).data() + 8);
  EXPECT_EQ(out->bytes[0].size(), 16u);
  EXPECT_EQ(out->copied_bytes, 0u);
  EXPECT_EQ(out->tree[0].tensor.device, "cuda:1");
  EXPECT_TRUE(out->tree[0].tensor.requires_grad);
}

struct BadCase {
  const char* name;
  std::string pickle;
  const char* error;
};

class PickleRejects : public ::testing::TestWithParam<BadCase> {};

TEST_P(PickleRejects, WithAClearError) {
  auto out = Decode(GetParam().pickle);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().ToString(), HasSubstr(GetParam().error));
}

const std::string kTensorPrefix =
    P("\200\002"
      "ctorch._utils\n_rebuild_tensor_v2\n((X\007\000\000\000storage"
      "ctorch\nFloatStorage\nX\001\000\000\0000X\003\000\000\000cpuK\006tQ");

INSTANTIATE_TEST_SUITE_P(
    Corpus, PickleRejects,
    ::testing::Values(
        BadCase{"OsSystem",
                P("\200\002"
                  "cos\nsystem\nX\002\000\000\000lsR."),
                "unsupported global 'os.system'"},
        BadCase{"BuiltinsEvalStackGlobal",
                P("\200\004\214\010"
                  "builtins\214\004"
                  "eval\223\214\001"
                  "1\205R."),
                "unsupported global 'builtins.eval'"},
        BadCase{"PosixSystemAfterData",
                P("\200\002]K\001a"
                  "cposix\nsystem\n."),
                "unsupported global 'posix.system'"},
        BadCase{"Truncated", P("\200\002]q\000(K\001K\002"), "truncated pickle"},
        BadCase{"TruncatedString", P("\200\002X\377\000\000\000abc."), "truncated pickle"},
        BadCase{"Empty", P(""), "truncated pickle"},
        BadCase{"UnknownOpcode", P("\200\002\377."), "unknown pickle opcode 0xff"},
        BadCase{"Inst", P("\200\002(ios\nsystem\n."), "opcode INST is not supported"},
        BadCase{"MemoMiss", P("\200\002h\005."), "memo key 5 missing"},
        BadCase{"StackUnderflow", P("\200\002R."), "stack underflow"},
        BadCase{"ReduceBelowMark", P("\200\002K\001(R."), "stack underflow"},
        BadCase{"AppendToDict", P("\200\002}K\001a."), "APPEND to a dict"},
        BadCase{"SetItemOnList", P("\200\002]K\001K\002s."), "SETITEM on a list"},
        BadCase{"NoStop", P("\200\002K\001"), "no STOP opcode"},
        BadCase{"Protocol9", P("\200\011N."), "unsupported pickle protocol 9"},
        BadCase{"BadUtf8", P("\200\002X\002\000\000\000\303\050."), "not valid UTF-8"},
        BadCase{"Cycle", P("\200\002]q\000h\000a."), "contains itself"},
        BadCase{"TupleKey", P("\200\002}K\001\205K\002s."), "dict key of type tuple"},
        BadCase{"BareGlobal",
                P("\200\002"
                  "ccollections\nOrderedDict\n."),
                "is not a value"},
        BadCase{"PersistentIdNotStorage", P("\200\002X\001\000\000\000xQ."),
                "persistent id must be"},
        BadCase{"PersistentIdWrongType",
                P("\200\002(X\007\000\000\000storage"
                  "ccollections\nOrderedDict\n"
                  "X\001\000\000\0000X\003\000\000\000cpuK\001tQ."),
                "storage type must be a torch storage class"},
        BadCase{"TensorNegativeStride",
                kTensorPrefix + P("K\000K\002\205J\377\377\377\377\205\211}tR."),
                "non-negative ints"},
        BadCase{"TensorOffsetPastEnd", kTensorPrefix + P("K\007K\001\205K\001\205\211}tR."),
                "reaches past the end of its storage of 6 elements"},
        BadCase{"TensorStridePastEnd", kTensorPrefix + P("K\000K\003\205K\003\205\211}tR."),
                "reaches past the end"},
        BadCase{"TensorShapeOverflow",
                kTensorPrefix + P("K\000\212\005\000\000\000\000\001\212\005\000\000\000\000\001"
                                  "\206K\001K\001\206\211}tR."),
                "overflow"},
        BadCase{"TensorWithBackwardHooks",
                kTensorPrefix + P("K\000K\001\205K\001\205\211}K\001K\002stR."),
                "backward hooks are not supported"},
        BadCase{"TensorArgCount", kTensorPrefix + P("K\000tR."), "takes 6 arguments, got 2"},
        BadCase{"StorageRedeclared",
                P("\200\002(X\007\000\000\000storagectorch\nFloatStorage\nX\001\000\000\0000"
                  "X\003\000\000\000cpuK\006tQ(X\007\000\000\000storagectorch\nLongStorage\n"
                  "X\001\000\000\0000X\003\000\000\000cpuK\006tQ\206."),
                "declared twice"},
        BadCase{"Set", P("\200\004\217."), "opcode EMPTY_SET is not supported"},
        BadCase{"CodecsOtherEncoding",
                P("\200\002"
                  "c_codecs\nencode\nX\001\000\000\000"
                  "aX\005\000\000\000utf_8\206R."),
                "unsupported encoding 'utf_8'"},
        BadCase{"BuildOnList", P("\200\002]}b."), "BUILD on a list is not supported"}),
    [](const ::testing::TestParamInfo<BadCase>& info) { return info.param.name; });

TEST(Pickle, BillionLaughsStopsAtMaxNodes) {
  // a = [0]*10 via memo, b = [a]*10, ... 7 levels: 10^7 leaves.
  std::string pkl = P("\200\002]q\000(");
  for (int i = 0; i < 10; ++i) pkl += P("K\000");
  pkl += "e";
  for (int level = 1; level < 8; ++level) {
    pkl += "]";
    pkl += P("r") + std::string(reinterpret_cast<const char*>(&level), 4);
    pkl += "(";
    for (int i = 0; i < 10; ++i) {
      pkl += P("j");
      const int prev = level - 1;
      pkl += std::string(reinterpret_cast<const char*>(&prev), 4);
    }
    pkl += "e";
  }
  pkl += ".";
  ReadOptions options;
  options.max_nodes = 100000;
  auto out = Decode(pkl, std::string(64, 'x'), options);
  ASSERT_FALSE(out.ok());
  EXPECT_THAT(out.status().ToString(), HasSubstr("more than 100000 values"));
}

TEST(Pickle, DeepNestingIsRefused) {
  std::string pkl = P("\200\002");
  for (int i = 0; i < 200; ++i) pkl += "]";
  for (int i = 0; i < 199; ++i) pkl += "a";
  pkl += ".";
  auto out = Decode(pkl);
  EXPECT_THAT(out.status().ToString(), HasSubstr("nested deeper than 128"));
}

TEST(Pickle, MaxObjects) {
  std::string pkl = P("\200\002]");
  for (int i = 0; i < 1000; ++i) pkl += P("K\001\141");
  pkl += ".";
  PickleOptions options;
  options.max_objects = 100;
  EXPECT_THAT(ParsePickle(pkl, options).status().ToString(), HasSubstr("more than 100 objects"));
}

TEST(PickleEncoder, IntsRoundTripAtEveryWidth) {
  const int64_t values[] = {0,
                            1,
                            255,
                            256,
                            65535,
                            65536,
                            -1,
                            -256,
                            std::numeric_limits<int32_t>::min(),
                            std::numeric_limits<int32_t>::max(),
                            int64_t{std::numeric_limits<int32_t>::max()} + 1,
                            int64_t{std::numeric_limits<int32_t>::min()} - 1,
                            int64_t{1} << 40,
                            -(int64_t{1} << 40),
                            0x7fffffffffffffLL,
                            std::numeric_limits<int64_t>::min(),
                            std::numeric_limits<int64_t>::max()};
  for (int64_t v : values) {
    std::string s;
    PickleEncoder e(&s);
    e.Proto();
    e.Int(v);
    e.Stop();
    auto out = Decode(s);
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->tree[0].int_value, v) << v;
  }
}

TEST(PickleEncoder, FloatsStringsAndGlobalsMemoized) {
  std::string s;
  PickleEncoder e(&s);
  e.Proto();
  e.Mark();
  e.Float(-0.25);
  e.Float(std::numeric_limits<double>::infinity());
  e.Str("h\303\251llo");
  e.Global("collections", "OrderedDict");
  e.EmptyTuple();
  e.Reduce();
  e.Global("collections", "OrderedDict");  // a BINGET the second time
  e.EmptyTuple();
  e.Reduce();
  e.Tuple(5);
  e.Stop();
  EXPECT_EQ(s.find("OrderedDict"), s.rfind("OrderedDict"));
  auto out = Decode(s);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->tree.size(), 6u);
  EXPECT_EQ(out->tree[1].float_value, -0.25);
  EXPECT_TRUE(std::isinf(out->tree[2].float_value));
  EXPECT_EQ(out->tree[3].string_value, "h\303\251llo");
  EXPECT_EQ(out->tree[4].kind, NodeKind::kDict);
}

TEST(Utf8, Validation) {
  EXPECT_TRUE(IsValidUtf8("plain"));
  EXPECT_TRUE(IsValidUtf8("\303\251\342\202\254\360\237\230\200"));
  EXPECT_FALSE(IsValidUtf8("\300\257"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\355\240\200"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\364\220\200\200"));  // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\342\202"));          // truncated
  EXPECT_FALSE(IsValidUtf8("\377"));
}

}  // namespace
}  // namespace ckpt::interop
