#include "tests/testing/trees.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace ckpt::testing {

std::string RandomBytes(uint64_t size, uint64_t seed) {
  std::string out(size, '\0');
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + 1);
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t v = rng();
    std::memcpy(&out[i], &v, 8);
  }
  uint64_t v = rng();
  for (; i < size; ++i) out[i] = static_cast<char>(v >> (8 * (i % 8)));
  return out;
}

TreeBuilder& TreeBuilder::Add(Node node, std::string bytes) {
  tree_.push_back(std::move(node));
  owned_.push_back(std::move(bytes));
  return *this;
}

#define CKPT_CONTAINER(Method, Kind)                             \
  TreeBuilder& TreeBuilder::Method(uint32_t size, NodeKey key) { \
    Node n;                                                      \
    n.kind = NodeKind::Kind;                                     \
    n.size = size;                                               \
    n.key = std::move(key);                                      \
    return Add(std::move(n));                                    \
  }
CKPT_CONTAINER(Dict, kDict)
CKPT_CONTAINER(List, kList)
CKPT_CONTAINER(Tuple, kTuple)
#undef CKPT_CONTAINER

TreeBuilder& TreeBuilder::None(NodeKey key) {
  Node n;
  n.kind = NodeKind::kNone;
  n.key = std::move(key);
  return Add(std::move(n));
}

TreeBuilder& TreeBuilder::Bool(bool v, NodeKey key) {
  Node n;
  n.kind = NodeKind::kBool;
  n.bool_value = v;
  n.key = std::move(key);
  return Add(std::move(n));
}

TreeBuilder& TreeBuilder::Int(int64_t v, NodeKey key) {
  Node n;
  n.kind = NodeKind::kInt;
  n.int_value = v;
  n.key = std::move(key);
  return Add(std::move(n));
}

TreeBuilder& TreeBuilder::Float(double v, NodeKey key) {
  Node n;
  n.kind = NodeKind::kFloat;
  n.float_value = v;
  n.key = std::move(key);
  return Add(std::move(n));
}

TreeBuilder& TreeBuilder::String(std::string v, NodeKey key) {
  Node n;
  n.kind = NodeKind::kString;
  n.string_value = std::move(v);
  n.key = std::move(key);
  return Add(std::move(n));
}

TreeBuilder& TreeBuilder::Tensor(NodeKey key, DType dtype, std::vector<int64_t> shape,
                                 uint64_t seed, std::string device) {
  Node n;
  n.kind = NodeKind::kTensor;
  n.key = std::move(key);
  n.tensor.dtype = dtype;
  n.tensor.shape = std::move(shape);
  n.tensor.device = std::move(device);
  n.data.size = *n.tensor.NumBytes();
  std::string bytes = RandomBytes(n.data.size, seed);
  return Add(std::move(n), std::move(bytes));
}

TreeBuilder& TreeBuilder::Bytes(NodeKey key, std::string bytes) {
  Node n;
  n.kind = NodeKind::kBytes;
  n.key = std::move(key);
  n.data.size = bytes.size();
  return Add(std::move(n), std::move(bytes));
}

client::SaveInput TreeBuilder::Input() const {
  client::SaveInput input;
  input.tree = tree_;
  for (const std::string& d : owned_) {
    input.bytes.emplace_back(reinterpret_cast<const uint8_t*>(d.data()), d.size());
  }
  return input;
}

TreeBuilder StateDict(int tensors, int64_t elements, uint64_t seed) {
  TreeBuilder b;
  b.Dict(2).Dict(tensors, std::string("model"));
  for (int i = 0; i < tensors; ++i) {
    b.Tensor(absl::StrCat("layer", i, ".weight"), DType::kFloat32, {elements}, seed + i);
  }
  b.Int(7, std::string("step"));
  return b;
}

}  // namespace ckpt::testing
