#ifndef CKPT_TESTS_TESTING_TREES_H_
#define CKPT_TESTS_TESTING_TREES_H_

// Builds value trees with owned tensor bytes for tests and benchmarks.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "client/raw_client.h"
#include "common/types.h"

namespace ckpt::testing {

/// A tree plus the bytes of its data nodes. Build in pre-order: open a
/// container with the number of children it will get, then add them.
class TreeBuilder {
 public:
  TreeBuilder& Dict(uint32_t size, NodeKey key = {});
  TreeBuilder& List(uint32_t size, NodeKey key = {});
  TreeBuilder& Tuple(uint32_t size, NodeKey key = {});
  TreeBuilder& None(NodeKey key = {});
  TreeBuilder& Bool(bool v, NodeKey key = {});
  TreeBuilder& Int(int64_t v, NodeKey key = {});
  TreeBuilder& Float(double v, NodeKey key = {});
  TreeBuilder& String(std::string v, NodeKey key = {});
  /// A tensor whose bytes are pseudo-random from `seed`.
  TreeBuilder& Tensor(NodeKey key, DType dtype, std::vector<int64_t> shape, uint64_t seed,
                      std::string device = "cpu");
  /// A raw byte leaf.
  TreeBuilder& Bytes(NodeKey key, std::string bytes);

  /// The SaveInput view (spans point into this builder; keep it alive).
  client::SaveInput Input() const;
  const Tree& tree() const { return tree_; }
  /// The bytes of node i.
  const std::string& data(size_t i) const { return owned_[i]; }
  /// Mutable bytes of node i (to make "changed" versions).
  std::string& mutable_data(size_t i) { return owned_[i]; }

 private:
  TreeBuilder& Add(Node node, std::string bytes = {});
  Tree tree_;
  std::vector<std::string> owned_;  // bytes of node i
};

/// Pseudo-random bytes.
std::string RandomBytes(uint64_t size, uint64_t seed);

/// A state_dict-like tree: {"model": {"layerI.weight": T, ...}, "step": 7}
/// with `tensors` float32 tensors of `elements` each.
TreeBuilder StateDict(int tensors, int64_t elements, uint64_t seed);

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_TREES_H_
