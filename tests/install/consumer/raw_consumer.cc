// Saves a float32[4] tensor through the installed client core and loads it
// back. Prints "ok" when the values round-trip. Usage: raw_consumer HOST:PORT
#include <ckpt/client/raw_client.h>

#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  auto client = ckpt::client::RawClient::Connect(argv[1], {});
  if (!client.ok()) return std::fprintf(stderr, "%s\n", client.status().ToString().c_str()), 1;
  std::vector<float> w = {1.5f, -2.0f, 3.25f, 0.0f};
  ckpt::Node root, t;
  root.kind = ckpt::NodeKind::kDict;
  root.size = 1;
  t.kind = ckpt::NodeKind::kTensor;
  t.key = std::string("w");
  t.tensor.dtype = ckpt::DType::kFloat32;
  t.tensor.shape = {4};
  t.data.size = w.size() * sizeof(float);
  ckpt::client::SaveInput input;
  input.tree = {root, t};
  input.bytes = {{}, {reinterpret_cast<const uint8_t*>(w.data()), t.data.size}};
  auto saved = (*client)->Save("consumer/raw", input, {});
  if (!saved.ok()) return std::fprintf(stderr, "%s\n", saved.status().ToString().c_str()), 1;
  auto loaded = (*client)->Load("consumer/raw", {});
  if (!loaded.ok()) return std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str()), 1;
  if (loaded->data.at(1).size() != t.data.size ||
      std::memcmp(loaded->data[1].data(), w.data(), t.data.size) != 0) {
    return std::fprintf(stderr, "values differ\n"), 1;
  }
  std::printf("ok %llu\n", static_cast<unsigned long long>(saved->version.version));
  return 0;
}
