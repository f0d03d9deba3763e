// Sliced loads (LoadRequest.slices): the server sends only the boxes asked
// for, byte-exact against a full load, and refuses bad boxes with
// INVALID_ARGUMENT without hurting the server.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "absl/strings/str_cat.h"
#include "client/raw_client.h"
#include "common/slice.h"
#include "server/server.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

using client::LoadedValue;
using client::LoadOptions;
using client::RawClient;
using ::testing::HasSubstr;
using testing::TreeBuilder;

class SliceLoadTest : public testing::ServerTest {
 protected:
  // Chunks of 256 KiB: long runs are sent from the chunks read (>= 64 KiB
  // pieces), short ones copied; boxes cross chunk boundaries.
  void AdjustOptions(server::ServerOptions& options) override { options.chunk_size = 256 << 10; }

  void SetUp() override {
    ServerTest::SetUp();
    ASSERT_NE(client_, nullptr);

    // {"model": {"w": f32[300,500], "x": i16[7,9,11], "s": f64[], "e": f32[0,4]},
    //  "blob": bytes, "list": [u8[1000], bf16[64,3]], "a/b": f32[2], "a": {"b": f32[2]}}
    builder_.Dict(5);
    builder_.Dict(4, std::string("model"))
        .Tensor(std::string("w"), DType::kFloat32, {300, 500}, 1)
        .Tensor(std::string("x"), DType::kInt16, {7, 9, 11}, 2)
        .Tensor(std::string("s"), DType::kFloat64, {}, 3)
        .Tensor(std::string("e"), DType::kFloat32, {0, 4}, 4);
    builder_.Bytes(std::string("blob"), testing::RandomBytes(5000, 5));
    builder_.List(2, std::string("list"))
        .Tensor({}, DType::kUInt8, {1000}, 6)
        .Tensor({}, DType::kBFloat16, {64, 3}, 7);
    builder_.Tensor(std::string("a/b"), DType::kFloat32, {2}, 8);
    builder_.Dict(1, std::string("a")).Tensor(std::string("b"), DType::kFloat32, {2}, 9);
    auto saved = client_->Save("team/sliced", builder_.Input(), {});
    ASSERT_TRUE(saved.ok()) << saved.status();
    auto full = client_->Load("team/sliced", LoadOptions{});
    ASSERT_TRUE(full.ok()) << full.status();
    full_ = *std::move(full);
    keys_ = FlattenedKeys(full_.tree);
  }

  size_t NodeOf(const std::string& key) const {
    for (size_t i = 0; i < keys_.size(); ++i) {
      if (keys_[i] == key) return i;
    }
    ADD_FAILURE() << "no key " << key;
    return 0;
  }

  // The box of the full load's data of `key`, element by element.
  std::string Expected(const TensorSlice& slice) const {
    const size_t i = NodeOf(slice.key);
    const TensorMeta& meta = full_.tree[i].tensor;
    const std::string& data = full_.data[i];
    const size_t dims = meta.shape.size();
    const uint64_t elem = DTypeSize(meta.dtype);
    std::string out;
    for (size_t d = 0; d < dims; ++d) {
      if (slice.length[d] == 0) return out;
    }
    std::vector<uint64_t> index(dims, 0);
    for (;;) {
      uint64_t linear = 0;
      for (size_t d = 0; d < dims; ++d) linear = linear * meta.shape[d] + slice.start[d] + index[d];
      out.append(data, linear * elem, elem);
      size_t d = dims;
      for (; d > 0; --d) {
        if (++index[d - 1] < slice.length[d - 1]) break;
        index[d - 1] = 0;
      }
      if (d == 0) return out;
    }
  }

  absl::StatusOr<LoadedValue> LoadSlices(std::vector<TensorSlice> slices,
                                         std::vector<std::string> patterns = {}) {
    LoadOptions options;
    options.slices = std::move(slices);
    options.patterns = std::move(patterns);
    return client_->Load("team/sliced", options);
  }

  // A status of a load of `slices` that must fail.
  absl::Status Refused(std::vector<TensorSlice> slices) {
    auto loaded = LoadSlices(std::move(slices));
    return loaded.ok() ? absl::OkStatus() : loaded.status();
  }

  TreeBuilder builder_;
  LoadedValue full_;
  std::vector<std::string> keys_;
};

TEST_F(SliceLoadTest, BoxesAreByteExactAgainstAFullLoad) {
  const std::vector<TensorSlice> slices = {
      {"model/w", {10, 0}, {200, 500}},   // whole rows: long runs across chunks
      {"model/x", {1, 2, 3}, {5, 6, 7}},  // short runs, copied
      {"model/s", {}, {}},                // 0-d
      {"list/1", {60, 1}, {4, 2}},        // a list element, by index
      {"model/e", {0, 1}, {0, 2}},        // an empty tensor's empty box
  };
  auto loaded = LoadSlices(slices);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->slice_nodes.size(), slices.size());
  // Only the sliced tensors (and their containers) are selected; each node
  // keeps the stored tensor's meta.
  const std::vector<std::string> keys = FlattenedKeys(loaded->tree);
  EXPECT_THAT(keys, ::testing::ElementsAre("", "model", "model/w", "model/x", "model/s", "model/e",
                                           "list", "list/0"));
  uint64_t total = 0;
  for (size_t s = 0; s < slices.size(); ++s) {
    SCOPED_TRACE(slices[s].key);
    const size_t node = loaded->slice_nodes[s];
    ASSERT_LT(node, loaded->tree.size());
    const Node& want = full_.tree[NodeOf(slices[s].key)];
    EXPECT_EQ(loaded->tree[node].tensor.shape, want.tensor.shape);
    EXPECT_EQ(loaded->tree[node].tensor.dtype, want.tensor.dtype);
    EXPECT_EQ(loaded->tree[node].data.size, want.data.size);
    const std::string expected = Expected(slices[s]);
    EXPECT_EQ(loaded->data[node].size(), *SliceBytes(want.tensor, slices[s]));
    EXPECT_TRUE(loaded->data[node] == expected) << "box bytes differ";
    total += loaded->data[node].size();
  }
  EXPECT_EQ(total, 200u * 500 * 4 + 5 * 6 * 7 * 2 + 8 + 4 * 2 * 2);
  // The list element keeps its place in the selected list (renumbered keys):
  // slice_nodes says where it is.
  EXPECT_EQ(loaded->tree[loaded->slice_nodes[3]].tensor.dtype, DType::kBFloat16);
}

TEST_F(SliceLoadTest, RandomBoxesMatchAndPatternsAddWholeLeaves) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 30; ++trial) {
    std::vector<TensorSlice> slices;
    for (const std::string key : {"model/w", "model/x", "list/0"}) {
      if (rng() % 3 == 0) continue;
      const TensorMeta& meta = full_.tree[NodeOf(key)].tensor;
      TensorSlice slice{key, {}, {}};
      for (int64_t extent : meta.shape) {
        const uint64_t a = rng() % (extent + 1);
        slice.start.push_back(a);
        slice.length.push_back(rng() % (extent - a + 1));
      }
      slices.push_back(std::move(slice));
    }
    // Patterns select whole leaves beside the slices.
    auto loaded = LoadSlices(slices, {"blob", "a"});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    for (size_t s = 0; s < slices.size(); ++s) {
      EXPECT_TRUE(loaded->data[loaded->slice_nodes[s]] == Expected(slices[s]))
          << "trial " << trial << " " << slices[s].key;
    }
    const std::vector<std::string> keys = FlattenedKeys(loaded->tree);
    for (size_t i = 0; i < keys.size(); ++i) {
      // "a" selects the dict a and so its tensor b (the last node), not the
      // tensor keyed "a/b".
      if (keys[i] == "blob") EXPECT_TRUE(loaded->data[i] == full_.data[NodeOf("blob")]);
      if (keys[i] == "a/b") EXPECT_TRUE(loaded->data[i] == full_.data.back());
    }
  }
}

TEST_F(SliceLoadTest, WholeBoxEqualsTheTensor) {
  auto loaded = LoadSlices({{"model/w", {0, 0}, {300, 500}}});
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(loaded->data[loaded->slice_nodes[0]] == full_.data[NodeOf("model/w")]);
  // skip_data: the tree, the slice's place, no bytes.
  LoadOptions options;
  options.slices = {{"model/w", {0, 0}, {3, 3}}};
  options.skip_data = true;
  auto tree_only = client_->Load("team/sliced", options);
  ASSERT_TRUE(tree_only.ok()) << tree_only.status();
  EXPECT_TRUE(tree_only->data[tree_only->slice_nodes[0]].empty());
}

TEST_F(SliceLoadTest, BadSlicesAreInvalidArgumentAndTheServerKeepsServing) {
  struct Case {
    std::vector<TensorSlice> slices;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"model/nope", {0}, {1}}}, "slice of 'model/nope': no such key in the version"},
      {{{"blob", {0}, {1}}}, "slice of 'blob': it is a bytes, not a tensor"},
      {{{"model", {}, {}}}, "slice of 'model': it is a dict, not a tensor"},
      {{{"model/w", {0}, {1}}},
       "slice of tensor 'model/w': 1 starts and 1 lengths for a tensor of 2 dimensions"},
      {{{"model/w", {0, 0, 0}, {1, 1, 1}}}, "3 starts and 3 lengths"},
      {{{"model/w", {0, 0}, {1}}}, "2 starts and 1 lengths"},
      {{{"model/w", {0, 0}, {301, 1}}}, "is outside shape [300, 500] in dimension 0"},
      {{{"model/w", {0, 500}, {1, 1}}}, "in dimension 1"},
      {{{"model/w", {~uint64_t{0}, 0}, {2, 1}}}, "in dimension 0"},
      {{{"model/w", {1, 0}, {~uint64_t{0}, 1}}}, "in dimension 0"},
      {{{"model/s", {0}, {1}}}, "tensor of 0 dimensions"},
      {{{"model/w", {0, 0}, {1, 1}}, {"model/w", {1, 0}, {1, 1}}},
       "tensor 'model/w' sliced twice in one load"},
      {{{"a/b", {0}, {1}}}, "slice key 'a/b' names more than one node"},
      {{{std::string(100000, 'k'), {0}, {1}}}, "(100000 bytes)"},
  };
  for (const Case& c : cases) {
    absl::Status status = Refused(c.slices);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.message << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr(c.message));
    EXPECT_LT(status.message().size(), 1000u);
  }
  std::vector<TensorSlice> many(kMaxSlices + 1, TensorSlice{"model/s", {}, {}});
  absl::Status status = Refused(many);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("100001 tensor slices in one load (max 100000)"));
  // Still serving, byte-exact.
  auto full = client_->Load("team/sliced", LoadOptions{});
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->data, full_.data);
}

TEST_F(SliceLoadTest, BoxesOfTooManyRunsAreRefusedBeforeAnyWork) {
  // One element of every row of a [4097, 4096, 2] tensor: 16,781,312 runs of
  // one byte, past kMaxSliceRuns.
  TreeBuilder b;
  b.Dict(1).Tensor(std::string("m"), DType::kUInt8, {4097, 4096, 2}, 12);
  ASSERT_TRUE(client_->Save("team/runs", b.Input(), {}).ok());
  LoadOptions options;
  options.slices = {{"m", {0, 0, 1}, {4097, 4096, 1}}};
  auto refused = client_->Load("team/runs", options);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(),
              HasSubstr("cover more than 16777216 contiguous runs of their tensors (slice of 'm'"));
  // Half the rows is within the limit, and byte-exact.
  options.slices = {{"m", {0, 0, 1}, {2048, 4096, 1}}};
  auto loaded = client_->Load("team/runs", options);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const std::string& got = loaded->data[loaded->slice_nodes[0]];
  ASSERT_EQ(got.size(), 2048u * 4096);
  const std::string& all = b.data(1);
  bool same = true;
  for (size_t i = 0; i < got.size() && same; ++i) same = got[i] == all[2 * i + 1];
  EXPECT_TRUE(same);
}

}  // namespace
}  // namespace ckpt
