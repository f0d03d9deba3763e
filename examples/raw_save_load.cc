// Save a small state_dict-like value tree and restore it, with the client
// core (no LibTorch). Usage: raw_save_load [HOST:PORT]   (default localhost:50051)
//
// The tree mirrors torch.save({"epoch": 5, "model_state_dict": {...}}):
// nodes in pre-order, each container announcing its number of children.

#include <cstdio>
#include <cstring>
#include <vector>

#include "client/raw_client.h"
#include "examples/server_arg.h"

using ckpt::DType;
using ckpt::Node;
using ckpt::NodeKind;

int main(int argc, char** argv) {
  std::string server;
  if (int exit = ckpt_examples::ParseServerArg(
          argc, argv, "Saves a small state_dict-like tree and restores it (client core).", &server);
      exit >= 0) {
    return exit;
  }
  auto client = ckpt::client::RawClient::Connect(server, {});
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }

  // {"epoch": 5, "model_state_dict": {"hidden.weight": float32[2, 3]}}
  std::vector<float> weight = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
  ckpt::client::SaveInput input;
  Node root;
  root.kind = NodeKind::kDict;
  root.size = 2;
  Node epoch;
  epoch.kind = NodeKind::kInt;
  epoch.key = std::string("epoch");
  epoch.int_value = 5;
  Node model;
  model.kind = NodeKind::kDict;
  model.key = std::string("model_state_dict");
  model.size = 1;
  Node w;
  w.kind = NodeKind::kTensor;
  w.key = std::string("hidden.weight");
  w.tensor.dtype = DType::kFloat32;
  w.tensor.shape = {2, 3};
  w.data.size = weight.size() * sizeof(float);
  input.tree = {root, epoch, model, w};
  input.bytes = {{}, {}, {}, {reinterpret_cast<const uint8_t*>(weight.data()), w.data.size}};

  ckpt::client::SaveOptions save_options;
  save_options.epoch = 5;
  save_options.tags = {"best"};
  auto saved = (*client)->Save("examples/mlp", input, save_options);
  if (!saved.ok()) {
    std::fprintf(stderr, "save: %s\n", saved.status().ToString().c_str());
    return 1;
  }
  std::printf("saved examples/mlp version %llu (%llu bytes sent)\n",
              static_cast<unsigned long long>(saved->version.version),
              static_cast<unsigned long long>(saved->bytes_sent));

  // Restore only the model's tensors, from the version tagged "best".
  ckpt::client::LoadOptions load_options;
  load_options.tag = "best";
  load_options.patterns = {"model_state_dict/*"};
  auto loaded = (*client)->Load("examples/mlp", load_options);
  if (!loaded.ok()) {
    std::fprintf(stderr, "load: %s\n", loaded.status().ToString().c_str());
    return 1;
  }
  std::vector<std::string> keys = ckpt::FlattenedKeys(loaded->tree);
  for (size_t i = 0; i < loaded->tree.size(); ++i) {
    if (!loaded->tree[i].has_data()) continue;
    std::vector<float> values(loaded->data[i].size() / sizeof(float));
    std::memcpy(values.data(), loaded->data[i].data(), loaded->data[i].size());
    std::printf("%s = [", keys[i].c_str());
    for (size_t k = 0; k < values.size(); ++k) std::printf(k ? ", %g" : "%g", values[k]);
    std::printf("]\n");
    if (values != weight) {
      std::fprintf(stderr, "restored values differ\n");
      return 1;
    }
  }
  return 0;
}
