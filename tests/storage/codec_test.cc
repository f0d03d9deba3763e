#include "storage/codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "absl/strings/match.h"
#include "tests/testing/tree_matchers.h"

namespace ckpt::storage {
namespace {

uint64_t Bits(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

double FromBits(uint64_t b) {
  double v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

Digest D(absl::string_view s) { return Digest::Of(s); }

void ExpectSameTree(const Tree& a, const Tree& b) {
  testing::ExpectSameTree(a, b, {/*chunks=*/true});
}

// A tree using every kind, key variant and field, with awkward values.
Tree SampleTree() {
  Tree t;
  Node root;
  root.kind = NodeKind::kDict;
  root.size = 13;  // Direct children, counted below.
  t.push_back(root);

  Node tensor;
  tensor.kind = NodeKind::kTensor;
  tensor.key = std::string("model.fc.weight");
  tensor.tensor.dtype = DType::kBFloat16;
  tensor.tensor.shape = {3, 0, 1, int64_t{1} << 40};
  tensor.tensor.device = "cuda:1";
  tensor.tensor.requires_grad = true;
  tensor.data.size = 10;
  tensor.data.chunk_size = 4;
  tensor.data.chunks = {D("a"), D("b"), D("c")};
  t.push_back(tensor);

  Node scalar_tensor;  // 0-dim on the default device.
  scalar_tensor.kind = NodeKind::kTensor;
  scalar_tensor.key = int64_t{-7};
  scalar_tensor.tensor.dtype = DType::kUInt64;
  scalar_tensor.data.size = 8;
  scalar_tensor.data.chunk_size = 8;
  scalar_tensor.data.chunks = {D("s")};
  // Statistics (format 2), with extreme values that must survive bit-exact.
  TensorStats stats;
  stats.count = 1;
  stats.min = -0.0;
  stats.max = std::numeric_limits<double>::max();
  stats.mean = std::numeric_limits<double>::denorm_min();
  stats.std = 0.5;
  stats.l2 = 1e300;
  stats.nan = 1;
  stats.pos_inf = 2;
  stats.neg_inf = uint64_t{1} << 62;
  scalar_tensor.tensor.stats = stats;
  t.push_back(scalar_tensor);

  Node empty_tensor;
  empty_tensor.kind = NodeKind::kTensor;
  empty_tensor.key = std::string("");
  empty_tensor.tensor.dtype = DType::kFloat32;
  empty_tensor.tensor.shape = {0};
  empty_tensor.tensor.device = "";
  t.push_back(empty_tensor);

  for (double v : {-0.0, std::numeric_limits<double>::quiet_NaN(), FromBits(0x7ff0000000000123ull),
                   std::numeric_limits<double>::infinity(),
                   std::numeric_limits<double>::denorm_min(), 0.001}) {
    Node f;
    f.kind = NodeKind::kFloat;
    f.key = std::string("f") + std::to_string(t.size());
    f.float_value = v;
    t.push_back(f);
  }

  Node i;
  i.kind = NodeKind::kInt;
  i.key = std::numeric_limits<int64_t>::min();
  i.int_value = std::numeric_limits<int64_t>::min();
  t.push_back(i);

  Node s;
  s.kind = NodeKind::kString;
  s.key = std::numeric_limits<int64_t>::max();
  s.string_value = std::string("with\0nul \xff bytes", 16);
  t.push_back(s);

  Node list;  // A list holding true, None and bytes.
  list.kind = NodeKind::kList;
  list.key = std::string("params");
  list.size = 3;
  t.push_back(list);
  Node b;
  b.kind = NodeKind::kBool;
  b.bool_value = true;
  t.push_back(b);
  Node none;
  none.kind = NodeKind::kNone;
  t.push_back(none);
  Node bytes;
  bytes.kind = NodeKind::kBytes;
  bytes.data.size = 5;
  bytes.data.chunk_size = 4 << 20;
  bytes.data.chunks = {D("bytes")};
  t.push_back(bytes);
  Node tuple;
  tuple.kind = NodeKind::kTuple;
  tuple.key = std::string("empty");
  t.push_back(tuple);
  return t;
}

TEST(CodecTest, BigEndianKeysSortNumerically) {
  EXPECT_EQ(EncodeBigEndian64(0x0102030405060708ull), std::string("\1\2\3\4\5\6\7\10", 8));
  EXPECT_LT(ChunkKey(255), ChunkKey(256));
  EXPECT_LT(ChunkKey(1), ChunkKey(uint64_t{1} << 40));
  EXPECT_EQ(*ParseChunkKey(ChunkKey(123456789)), 123456789u);
  EXPECT_EQ(*DecodeBigEndian64(EncodeBigEndian64(~uint64_t{0})), ~uint64_t{0});
  EXPECT_EQ(ParseChunkKey("1234567").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeBigEndian64("123456789").status().code(), absl::StatusCode::kDataLoss);
}

TEST(CodecTest, KeysRoundTrip) {
  Digest d = D("chunk");
  std::string ref = RefKey("team", d);
  EXPECT_EQ(ref.size(), 4u + 1 + 16);
  EXPECT_EQ(ref.substr(0, 5), RefPrefix("team"));
  auto parsed_ref = ParseRefKey(ref);
  ASSERT_TRUE(parsed_ref.ok());
  EXPECT_EQ(parsed_ref->first, "team");
  EXPECT_EQ(parsed_ref->second, d);
  EXPECT_FALSE(ParseRefKey("short").ok());

  std::string vk = VersionKey("a/b", 7);
  EXPECT_EQ(vk, std::string("va/b\0", 5) + EncodeBigEndian64(7));
  EXPECT_EQ(vk.substr(0, 5), VersionPrefix("a/b"));
  auto parsed_version = ParseVersionKey(vk);
  ASSERT_TRUE(parsed_version.ok());
  EXPECT_EQ(parsed_version->first, "a/b");
  EXPECT_EQ(parsed_version->second, 7u);
  EXPECT_EQ(ManifestKey("a/b", 7), std::string("ma/b\0", 5) + EncodeBigEndian64(7));
  EXPECT_EQ(CounterKey("a/b"), "na/b");
  EXPECT_FALSE(ParseVersionKey(ManifestKey("a/b", 7)).ok());
  EXPECT_FALSE(ParseVersionKey("v").ok());
  // Scans over the versions of several names.
  EXPECT_EQ(VersionNamePrefix("a/"), "va/");
  EXPECT_EQ(PrefixSuccessor(VersionNamePrefix("")), "w");
  EXPECT_TRUE(absl::StartsWith(VersionKey("a/b", 1), VersionNamePrefix("a/")));
  EXPECT_LT(VersionKey("a/b", ~uint64_t{0}), VersionKeysAfter("a/b"));
  EXPECT_LT(VersionKeysAfter("a/b"), VersionKey("a/b0", 1));
  EXPECT_LT(VersionKeysAfter("a/b"), VersionKey("a/b/c", 1));

  // Versions of one name sort by number; a name sorts before its children.
  EXPECT_LT(VersionKey("a", 2), VersionKey("a", 10));
  EXPECT_LT(VersionKey("a", ~uint64_t{0}), VersionKey("a/b", 1));

  auto tag = ParseTagKey(TagKey("a/b", "best"));
  ASSERT_TRUE(tag.ok());
  EXPECT_EQ(tag->first, "a/b");
  EXPECT_EQ(tag->second, "best");
  EXPECT_EQ(TagKey("a/b", "best").substr(0, 4), TagPrefix("a/b"));
  EXPECT_FALSE(ParseTagKey("no-separator").ok());
  EXPECT_FALSE(ParseTagKey(std::string("name\0", 5)).ok());

  EXPECT_EQ(*ParsePendingKey(PendingKey(42)), 42u);
  EXPECT_EQ(PendingKey(42)[0], 'p');
  EXPECT_FALSE(ParsePendingKey("p123").ok());

  EXPECT_EQ(PrefixSuccessor("ab"), "ac");
  EXPECT_EQ(PrefixSuccessor(std::string("a\xff", 2)), "b");
  EXPECT_EQ(PrefixSuccessor(std::string("\xff\xff", 2)), "");
}

TEST(CodecTest, RefValueRoundTrip) {
  for (RefValue v : {RefValue{0, 0, 0}, RefValue{1 << 20, 4 << 20, 3},
                     RefValue{~uint64_t{0}, ~uint64_t{0}, ~uint64_t{0}}}) {
    auto decoded = DecodeRefValue(EncodeRefValue(v));
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, v);
  }
  std::string good = EncodeRefValue({5, 6, 7});
  for (size_t n = 0; n < good.size(); ++n) {
    auto r = DecodeRefValue(good.substr(0, n));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << n;
  }
  EXPECT_EQ(DecodeRefValue(good + "x").status().code(), absl::StatusCode::kDataLoss);
  std::string bad_format = good;
  bad_format[0] = 9;
  auto r = DecodeRefValue(bad_format);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("corrupt refs entry"), std::string::npos);
}

TEST(CodecTest, RetentionPolicyRoundTrip) {
  RetentionPolicy policy;
  policy.keep_last = 5;
  policy.keep_every_steps = 1000;
  policy.keep_best = 2;
  policy.metric = "val/acc";
  policy.higher_is_better = true;
  for (const RetentionPolicy& p : {policy, RetentionPolicy{}}) {
    auto decoded = DecodeRetentionPolicy(EncodeRetentionPolicy(p));
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, p);
  }
  std::string good = EncodeRetentionPolicy(policy);
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_EQ(DecodeRetentionPolicy(good.substr(0, n)).status().code(),
              absl::StatusCode::kDataLoss);
  }
  std::string bad_flag = good;
  bad_flag.back() = 7;
  auto r = DecodeRetentionPolicy(bad_flag);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("corrupt retention policy"), std::string::npos);
  EXPECT_EQ(DecodeRetentionPolicy(good + "x").status().code(), absl::StatusCode::kDataLoss);
}

TEST(CodecTest, PendingRecordRoundTrip) {
  PendingRecord record;
  record.ranges = {
      {1 << 20, (2 << 20) - 1}, {5 << 20, (6 << 20) - 1}, {~uint64_t{0}, ~uint64_t{0}}};
  record.chunks = 17;
  record.bytes = 123456789;
  auto decoded = DecodePendingRecord(EncodePendingRecord(record));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, record);
  EXPECT_EQ(*DecodePendingRecord(EncodePendingRecord({})), PendingRecord{});

  std::string good = EncodePendingRecord(record);
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_EQ(DecodePendingRecord(good.substr(0, n)).status().code(), absl::StatusCode::kDataLoss);
  }
  // A range whose end overflows 64 bits.
  std::string overflow("\x01\x01\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x00\x00", 15);
  EXPECT_EQ(DecodePendingRecord(overflow).status().code(), absl::StatusCode::kDataLoss);
  // A count of ranges far beyond the input.
  EXPECT_EQ(DecodePendingRecord(std::string("\x01\xff\xff\xff\xff\x0f", 6)).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(CodecTest, VersionRecordRoundTripsAllFieldsButTags) {
  VersionInfo info;
  info.name = "team/run-42/model";
  info.version = 12;
  info.create_time_ms = 1700000000123;
  info.step = -5;
  info.epoch = std::numeric_limits<int64_t>::max();
  info.metadata = {{"lr", "0.001"}, {"", ""}, {"bin", std::string("\0\xff", 2)}};
  info.tags = {"best", "latest"};
  info.num_tensors = 592;
  info.num_nodes = 700;
  info.data_bytes = uint64_t{1} << 40;
  info.new_bytes = 77;
  info.world_size = 8;
  info.parent = "team/run-41/model@7";
  auto decoded = DecodeVersionRecord(EncodeVersionRecord(info));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->name, info.name);
  EXPECT_EQ(decoded->version, info.version);
  EXPECT_EQ(decoded->create_time_ms, info.create_time_ms);
  EXPECT_EQ(decoded->step, info.step);
  EXPECT_EQ(decoded->epoch, info.epoch);
  EXPECT_EQ(decoded->metadata, info.metadata);
  EXPECT_TRUE(decoded->tags.empty());
  EXPECT_EQ(decoded->num_tensors, info.num_tensors);
  EXPECT_EQ(decoded->num_nodes, info.num_nodes);
  EXPECT_EQ(decoded->data_bytes, info.data_bytes);
  EXPECT_EQ(decoded->new_bytes, info.new_bytes);
  EXPECT_EQ(decoded->world_size, info.world_size);
  EXPECT_EQ(decoded->parent, info.parent);

  // The parent is an optional tail (format 1 records have none): a record
  // cut right before it reads as one without a parent; every other cut is
  // corrupt.
  VersionInfo orphan = info;
  orphan.parent.clear();
  const size_t without_parent = EncodeVersionRecord(orphan).size();
  auto old_record = DecodeVersionRecord(EncodeVersionRecord(orphan));
  ASSERT_TRUE(old_record.ok());
  EXPECT_EQ(old_record->parent, "");
  std::string good = EncodeVersionRecord(info);
  for (size_t n = 0; n < good.size(); ++n) {
    if (n == without_parent) continue;
    auto r = DecodeVersionRecord(good.substr(0, n));
    ASSERT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << n;
    EXPECT_NE(r.status().message().find("corrupt version record"), std::string::npos);
  }
  EXPECT_EQ(DecodeVersionRecord(good + '\0').status().code(), absl::StatusCode::kDataLoss);
}

TEST(CodecTest, TreeRoundTripsEveryField) {
  Tree tree = SampleTree();
  std::string encoded = EncodeTree(tree);
  auto decoded = DecodeTree(encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSameTree(tree, *decoded);
  EXPECT_TRUE(std::signbit((*decoded)[4].float_value));  // -0.0 stays negative.
  EXPECT_TRUE(std::isnan((*decoded)[5].float_value));
  // Deterministic: the same tree encodes to the same bytes.
  EXPECT_EQ(EncodeTree(*decoded), encoded);
  // Empty trees round-trip too.
  auto empty = DecodeTree(EncodeTree({}));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(CodecTest, TreeEncodingIsCompact) {
  // A state_dict-like tree: 1000 tensors of one 4 KiB chunk each.
  Tree tree(1);
  tree[0].kind = NodeKind::kDict;
  tree[0].size = 1000;
  for (int i = 0; i < 1000; ++i) {
    Node n;
    n.kind = NodeKind::kTensor;
    n.key = "layer" + std::to_string(i) + ".weight";
    n.tensor.dtype = DType::kFloat32;
    n.tensor.shape = {32, 32};
    n.data.size = 4096;
    n.data.chunk_size = 4 << 20;
    n.data.chunks = {D(std::to_string(i))};
    tree.push_back(n);
  }
  // Key (~15) + digest (16) + a handful of small fields per tensor.
  EXPECT_LT(EncodeTree(tree).size(), 1000u * 50);
}

TEST(CodecTest, TreeRejectsEveryTruncation) {
  std::string good = EncodeTree(SampleTree());
  for (size_t n = 0; n < good.size(); ++n) {
    auto r = DecodeTree(good.substr(0, n));
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes decoded";
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_EQ(r.status().message().rfind("corrupt manifest: ", 0), 0u) << r.status();
  }
  EXPECT_EQ(DecodeTree(good + "x").status().code(), absl::StatusCode::kDataLoss);
}

TEST(CodecTest, TreeRejectsMalformedFields) {
  auto expect_corrupt = [](const std::string& bytes, absl::string_view what) {
    auto r = DecodeTree(bytes);
    ASSERT_FALSE(r.ok()) << what;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << what;
    EXPECT_NE(r.status().message().find("corrupt manifest"), std::string::npos);
  };
  expect_corrupt("", "empty");
  expect_corrupt(std::string("\x02\x00", 2), "unknown format");
  // One node: kind, key tag, flags.
  expect_corrupt(std::string("\x01\x01\x0a\x00\x00", 5), "kind past kBytes");
  expect_corrupt(std::string("\x01\x01\x03\x03\x00", 5), "unknown key tag");
  expect_corrupt(std::string("\x01\x01\x03\x00\x80\x08", 6), "unknown field flag");
  expect_corrupt(std::string("\x01\x01\x08\x00\x20\x10", 6), "dtype past kMaxDType");
  expect_corrupt(std::string("\x01\x01\x00\x00\x01\x80\x80\x80\x80\x10", 10),
                 "container size past uint32");
  expect_corrupt(std::string("\x01\x01\x03\x01\x05"
                             "ab",
                             7),
                 "string past the end");
  // An 11-byte varint, and one overflowing 64 bits in its 10th byte.
  expect_corrupt(std::string("\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12),
                 "overlong varint");
  expect_corrupt(std::string("\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02", 11),
                 "varint overflow");
  // Node counts and digest counts far past the input must not allocate.
  expect_corrupt(std::string("\x01\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 10), "huge node count");
  expect_corrupt(std::string("\x01\x01\x09\x00\x80\x04\x05\x04\xff\xff\xff\xff\x0f", 13),
                 "huge digest count");
  expect_corrupt(std::string("\x01\x01\x08\x00\x40\xff\xff\xff\xff\x0f", 10), "huge ndims");
}

TEST(CodecTest, TreeSurvivesRandomCorruption) {
  // Flipped bytes must give either an error or some tree, never a crash.
  std::string good = EncodeTree(SampleTree());
  std::mt19937 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bad = good;
    int flips = 1 + trial % 4;
    for (int f = 0; f < flips; ++f) {
      bad[rng() % bad.size()] = static_cast<char>(rng());
    }
    auto r = DecodeTree(bad);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    }
  }
}

}  // namespace
}  // namespace ckpt::storage
