// Saves a LibTorch module's state_dict through the installed ckpt::client and
// loads it into a fresh module. Prints "ok" when equal. Usage: HOST:PORT
#include <ckpt/client/client.h>
#include <torch/torch.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  auto client = ckpt::client::Client::Connect(argv[1], {});
  if (!client.ok()) return std::fprintf(stderr, "%s\n", client.status().ToString().c_str()), 1;
  torch::nn::Linear saved_model(3, 2), fresh(3, 2);
  auto saved = (*client)->Save("consumer/torch", ckpt::client::StateDict(*saved_model), {});
  if (!saved.ok()) return std::fprintf(stderr, "%s\n", saved.status().ToString().c_str()), 1;
  auto state = (*client)->Load("consumer/torch", {});
  if (!state.ok()) return std::fprintf(stderr, "%s\n", state.status().ToString().c_str()), 1;
  auto keys = ckpt::client::LoadStateDict(*fresh, *state, /*strict=*/true);
  if (!keys.ok()) return std::fprintf(stderr, "%s\n", keys.status().ToString().c_str()), 1;
  if (!torch::equal(saved_model->weight, fresh->weight) ||
      !torch::equal(saved_model->bias, fresh->bias)) {
    return std::fprintf(stderr, "values differ\n"), 1;
  }
  std::printf("ok\n");
  return 0;
}
