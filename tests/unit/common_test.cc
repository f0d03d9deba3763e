#include <gtest/gtest.h>

#include "common/names.h"
#include "common/types.h"

namespace ckpt {
namespace {

Node Dict(uint32_t n, NodeKey key = {}) {
  Node node;
  node.kind = NodeKind::kDict;
  node.size = n;
  node.key = std::move(key);
  return node;
}

Node Tensor(NodeKey key, DType dtype, std::vector<int64_t> shape, uint64_t size) {
  Node node;
  node.kind = NodeKind::kTensor;
  node.key = std::move(key);
  node.tensor.dtype = dtype;
  node.tensor.shape = std::move(shape);
  node.data.size = size;
  node.data.chunk_size = size ? 4096 : 0;
  node.data.chunks.resize(DataRef::NumChunks(size, 4096));
  return node;
}

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kComplex128), 16u);
  EXPECT_EQ(DTypeSize(DType::kUnspecified), 0u);
  EXPECT_EQ(DTypeName(DType::kFloat32), "float32");
  EXPECT_EQ(*ParseDType("torch.long"), DType::kInt64);
  EXPECT_EQ(*ParseDType("bfloat16"), DType::kBFloat16);
  EXPECT_EQ(ParseDType("float128").status().code(), absl::StatusCode::kNotFound);
}

TEST(DigestTest, KnownValueAndHex) {
  Digest a = Digest::Of(absl::string_view("hello"));
  Digest b = Digest::Of(absl::string_view("hello"));
  Digest c = Digest::Of(absl::string_view("hellp"));
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(a.Hex().size(), 32u);
  EXPECT_EQ(Digest::FromBytes(a.view())->Hex(), a.Hex());
  EXPECT_FALSE(Digest::FromBytes("short").ok());
}

TEST(TensorMetaTest, OverflowAndNegative) {
  TensorMeta m{DType::kFloat32, {2, 3}};
  EXPECT_EQ(*m.NumBytes(), 24u);
  m.shape = {-1, 3};
  EXPECT_EQ(m.NumBytes().status().code(), absl::StatusCode::kInvalidArgument);
  m.shape = {int64_t{1} << 40, int64_t{1} << 40};
  EXPECT_EQ(m.NumBytes().status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m.NumBytes().status().message().find("overflow"), std::string::npos);
  m.shape = {};
  EXPECT_EQ(*m.NumElements(), 1u);
  m.shape = {0, int64_t{1} << 62};
  EXPECT_EQ(*m.NumBytes(), 0u);
}

TEST(ValidateTreeTest, AcceptsNestedAndNamesBadKeys) {
  Tree tree = {Dict(2), Dict(1, std::string("model")),
               Tensor(std::string("fc.weight"), DType::kFloat32, {2, 2}, 16),
               Tensor(int64_t{0}, DType::kInt64, {}, 8)};
  EXPECT_TRUE(ValidateTree(tree, 4 << 20).ok());
  EXPECT_EQ(FlattenedKeys(tree), (std::vector<std::string>{"", "model", "model/fc.weight", "0"}));

  Tree dup = {Dict(2), Tensor(std::string("a"), DType::kInt8, {1}, 1),
              Tensor(std::string("a"), DType::kInt8, {1}, 1)};
  auto s = ValidateTree(dup, 4 << 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("duplicate dict key 'a'"), std::string::npos) << s;

  Tree mismatch = {Dict(1), Tensor(std::string("w"), DType::kFloat32, {3}, 8)};
  s = ValidateTree(mismatch, 4 << 20);
  EXPECT_NE(s.message().find("tensor 'w'"), std::string::npos) << s;
  EXPECT_NE(s.message().find("12 bytes"), std::string::npos) << s;

  Tree short_tree = {Dict(3), Tensor(std::string("w"), DType::kInt8, {1}, 1)};
  EXPECT_EQ(ValidateTree(short_tree, 4 << 20).code(), absl::StatusCode::kInvalidArgument);

  Tree trailing = {Dict(0), Dict(0)};
  EXPECT_EQ(ValidateTree(trailing, 4 << 20).code(), absl::StatusCode::kInvalidArgument);

  Node list;
  list.kind = NodeKind::kList;
  list.size = 1;
  Tree keyed_list = {list, Tensor(std::string("x"), DType::kInt8, {1}, 1)};
  EXPECT_EQ(ValidateTree(keyed_list, 4 << 20).code(), absl::StatusCode::kInvalidArgument);
}

TEST(NamesTest, Validation) {
  EXPECT_TRUE(ValidateName("team/run-42/model").ok());
  EXPECT_TRUE(ValidateName("a.b_c-d").ok());
  for (std::string bad : std::vector<std::string>{"", "a//b", "/a", "a/", "a/../b", "..", ".",
                                                  "a b", "a\x01", std::string(300, 'x')}) {
    auto s = ValidateName(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_NE(ValidateName("a\x01").message().find("control character \\x01"), std::string::npos);
  EXPECT_EQ(NamespaceOf("team/run/x"), "team");
  EXPECT_EQ(NamespaceOf("solo"), "solo");
  EXPECT_TRUE(ValidateTag("best").ok());
  EXPECT_FALSE(ValidateTag("12").ok());
  EXPECT_FALSE(ValidateTag("a/b").ok());
}

TEST(NamesTest, VersionRefs) {
  auto r = ParseVersionRef("a/b@3");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->version, 3u);
  r = ParseVersionRef("a/b@best");
  EXPECT_EQ(r->tag, "best");
  r = ParseVersionRef("a/b");
  EXPECT_EQ(r->version, 0u);
  EXPECT_TRUE(r->tag.empty());
  EXPECT_FALSE(ParseVersionRef("a/b@").ok());
  EXPECT_FALSE(ParseVersionRef("a/b@0").ok());
}

TEST(KeyPatternTest, Globs) {
  auto p = [](const char* s) { return *KeyPattern::Compile(s); };
  EXPECT_TRUE(p("model_state_dict/*").Matches("model_state_dict/hidden.weight"));
  EXPECT_TRUE(p("*/hidden.*").Matches("model_state_dict/hidden.bias"));
  EXPECT_FALSE(p("*/hidden.*").Matches("model_state_dict/output.bias"));
  EXPECT_TRUE(p("layer[0-2].w").Matches("layer1.w"));
  EXPECT_FALSE(p("layer[!0-2].w").Matches("layer1.w"));
  EXPECT_TRUE(p("a?c").Matches("abc"));
  EXPECT_TRUE(p("a\\*").Matches("a*"));
  EXPECT_FALSE(p("a\\*").Matches("ab"));
  EXPECT_TRUE(p("*").Matches(""));
  EXPECT_EQ(KeyPattern::Compile("a[bc").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyPattern::Compile("a\\").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KeyPattern::Compile("").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ckpt

#include "common/select.h"

namespace ckpt {
namespace {

TEST(SelectTreeTest, PrunesByPatternAndKeepsSubtrees) {
  // {"model": {"hidden.weight": T, "hidden.bias": T, "out.weight": T}, "epoch": 5}
  Node epoch;
  epoch.kind = NodeKind::kInt;
  epoch.key = std::string("epoch");
  epoch.int_value = 5;
  Tree tree = {Dict(2),
               Dict(3, std::string("model")),
               Tensor(std::string("hidden.weight"), DType::kFloat32, {2}, 8),
               Tensor(std::string("hidden.bias"), DType::kFloat32, {1}, 4),
               Tensor(std::string("out.weight"), DType::kFloat32, {1}, 4),
               epoch};
  ASSERT_TRUE(ValidateTree(tree, 4 << 20).ok());

  auto patterns = *CompilePatterns({"*/hidden.*"});
  auto sel = SelectTree(tree, patterns);
  ASSERT_TRUE(sel.ok()) << sel.status();
  EXPECT_EQ(FlattenedKeys(sel->tree),
            (std::vector<std::string>{"", "model", "model/hidden.weight", "model/hidden.bias"}));
  EXPECT_EQ(sel->tree[0].size, 1u);
  EXPECT_EQ(sel->tree[1].size, 2u);
  EXPECT_EQ(sel->source, (std::vector<size_t>{0, 1, 2, 3}));
  EXPECT_TRUE(ValidateTree(sel->tree, 4 << 20).ok());

  // A container's key selects its whole subtree.
  sel = SelectTree(tree, *CompilePatterns({"model", "epoch"}));
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ(sel->tree.size(), tree.size());

  auto none = SelectTree(tree, *CompilePatterns({"nothing*"}));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(none.status().message().find("nothing*"), std::string::npos);
}

TEST(ValidateTreeTest, RejectsDeepNesting) {
  Tree tree;
  for (size_t i = 0; i < kMaxDepth + 2; ++i) {
    Node list;
    list.kind = NodeKind::kList;
    list.size = 1;
    tree.push_back(list);
  }
  Node leaf;
  tree.push_back(leaf);
  auto s = ValidateTree(tree, 4 << 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("nested deeper"), std::string::npos) << s;
}

}  // namespace
}  // namespace ckpt

namespace ckpt {
namespace {

TEST(KeyPatternTest, EscapedKeysMatchOnlyThemselves) {
  for (const char* key : {"a.b*", "w[0]", "odd?key", "back\\slash", "plain"}) {
    auto p = KeyPattern::Compile(EscapeGlob(key));
    ASSERT_TRUE(p.ok()) << key;
    EXPECT_TRUE(p->Matches(key)) << key;
  }
  EXPECT_FALSE(KeyPattern::Compile(EscapeGlob("a.b*"))->Matches("a.bc"));
  EXPECT_FALSE(KeyPattern::Compile(EscapeGlob("w[0]"))->Matches("w0"));
}

}  // namespace
}  // namespace ckpt

#include <cerrno>
#include <chrono>
#include <random>

#include "common/errno_status.h"

namespace ckpt {
namespace {

// A reference matcher by recursion (exponential, for short inputs only).
bool Reference(const std::string& p, size_t pi, const std::string& k, size_t ki) {
  if (pi == p.size()) return ki == k.size();
  if (p[pi] == '*') {
    for (size_t j = ki; j <= k.size(); ++j) {
      if (Reference(p, pi + 1, k, j)) return true;
    }
    return false;
  }
  if (ki == k.size()) return false;
  if (p[pi] == '?') return Reference(p, pi + 1, k, ki + 1);
  if (p[pi] == '\\') return p[pi + 1] == k[ki] && Reference(p, pi + 2, k, ki + 1);
  return p[pi] == k[ki] && Reference(p, pi + 1, k, ki + 1);
}

TEST(KeyPatternTest, AgreesWithAReferenceMatcherOnRandomInputs) {
  std::mt19937 rng(7);
  const std::string pattern_chars = "ab*?\\";
  const std::string key_chars = "ab*";
  for (int round = 0; round < 20000; ++round) {
    std::string p, k;
    const int plen = 1 + rng() % 8, klen = rng() % 10;
    for (int i = 0; i < plen; ++i) p += pattern_chars[rng() % pattern_chars.size()];
    if (p.back() == '\\') p.back() = 'a';
    for (int i = 0; i < klen; ++i) k += key_chars[rng() % key_chars.size()];
    auto compiled = KeyPattern::Compile(p);
    ASSERT_TRUE(compiled.ok()) << p;
    ASSERT_EQ(compiled->Matches(k), Reference(p, 0, k, 0))
        << "pattern '" << p << "' key '" << k << "'";
  }
  // Long segments take the bit-parallel path.
  const std::string seg(100, 'x');
  EXPECT_TRUE(
      KeyPattern::Compile("*" + seg + "?" + seg + "*")->Matches("aa" + seg + "b" + seg + "cc"));
  EXPECT_FALSE(KeyPattern::Compile("*" + seg + "?" + seg + "*")->Matches("aa" + seg + seg));
  EXPECT_TRUE(KeyPattern::Compile("a*[xy]" + seg + "*b")->Matches("a" + seg + "y" + seg + "b"));
}

// What made a worker spin for minutes: O(key x pattern) backtracking.
TEST(KeyPatternTest, BacktrackingPatternsTakeLinearTime) {
  auto p = KeyPattern::Compile("*" + std::string(1021, 'a') + "b*");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->cost_per_byte(), 16u);
  const std::string key(60000, 'a');
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 16; ++i) EXPECT_FALSE(p->Matches(key));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // 16 x 60,000 bytes x 16 words: milliseconds; backtracking took ~1 s each.
  EXPECT_LT(seconds, 2.0);
}

TEST(SelectTreeTest, RefusesPatternsTooCostlyForTheTreeAndStopsWhenCancelled) {
  Tree tree(1);
  tree[0].kind = NodeKind::kDict;
  tree[0].size = 16;
  for (int i = 0; i < 16; ++i) {
    Node n;
    n.kind = NodeKind::kInt;
    n.key = std::string(60000, 'a') + std::to_string(i);
    tree.push_back(n);
  }
  std::vector<std::string> texts(16, "*" + std::string(1000, 'a') + "b*");
  auto patterns = CompilePatterns(texts);
  ASSERT_TRUE(patterns.ok());
  auto selected = SelectTree(tree, *patterns);
  EXPECT_EQ(selected.status().code(), absl::StatusCode::kResourceExhausted) << selected.status();
  patterns = CompilePatterns({"*a1*"});
  std::atomic<bool> cancelled{true};
  EXPECT_EQ(SelectTree(tree, *patterns, &cancelled).status().code(), absl::StatusCode::kCancelled);
  cancelled = false;
  EXPECT_TRUE(SelectTree(tree, *patterns, &cancelled).ok());
  // Pattern bytes per request are bounded too.
  EXPECT_EQ(CompilePatterns(std::vector<std::string>(65, std::string(1024, 'x'))).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ValidateTreeTest, BoundsKeyLengthsAndTheirTotal) {
  Tree tree(2);
  tree[0].kind = NodeKind::kDict;
  tree[0].size = 1;
  tree[1].kind = NodeKind::kInt;
  tree[1].key = std::string(kMaxKeyLength + 1, 'k');
  absl::Status s = ValidateTree(tree, 1 << 20);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("(65537 bytes)"), std::string::npos) << s.message();
  EXPECT_LT(s.message().size(), 1000u);
}

TEST(ValidateMetadataTest, Limits) {
  EXPECT_TRUE(ValidateMetadata({{"loss", "0.25"}}).ok());
  EXPECT_EQ(ValidateMetadata({{std::string(1025, 'k'), "v"}}).code(),
            absl::StatusCode::kInvalidArgument);
  std::map<std::string, std::string> many;
  for (int i = 0; i < 5; ++i) many[std::to_string(i)] = std::string(60000, 'v');
  EXPECT_EQ(ValidateMetadata(many).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ErrnoStatusTest, OneMappingForEveryLayer) {
  EXPECT_EQ(ErrnoStatus(ENOSPC, "writing x").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus(EDQUOT, "writing x").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoStatus(ENOENT, "opening x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus(EACCES, "opening x").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoStatus(EIO, "reading x").code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ErrnoStatus(ENOSPC, "writing x").message(), "writing x: No space left on device");
}

TEST(NamesTest, UserTagsAndExcerpts) {
  EXPECT_TRUE(ValidateUserTag("best").ok());
  EXPECT_TRUE(ValidateUserTag("_v1.0-rc").ok());
  for (const char* bad : {"latest", "..", ".", ".x", "-x", "123", ""}) {
    EXPECT_EQ(ValidateUserTag(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(ValidateTag("latest").ok());
  EXPECT_EQ(Excerpt("short"), "short");
  EXPECT_EQ(Excerpt(std::string(1000, 'x'), 4), "xxxx... (1000 bytes)");
  EXPECT_EQ(Excerpt("a\nb"), "a\\x0ab");
}

}  // namespace
}  // namespace ckpt
