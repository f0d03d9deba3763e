// The tutorial's other recipes against a ckpt server:
//   1. warm-starting model B from model A with strict=false,
//   2. several models and optimizers in one checkpoint,
//   3. loading a DataParallel ("module."-prefixed) state_dict into a plain model.
//
// Usage: state_dict_recipes [HOST:PORT]    (default localhost:50051)

#include <torch/torch.h>

#include <cstdio>

#include "absl/strings/str_join.h"
#include "client/client.h"
#include "examples/server_arg.h"

namespace {

struct NetA : torch::nn::Module {
  NetA() {
    hidden = register_module("hidden", torch::nn::Linear(3, 2));
    output = register_module("output", torch::nn::Linear(2, 1));
  }
  torch::nn::Linear hidden{nullptr}, output{nullptr};
};

// Shares "hidden" with NetA; its head differs.
struct NetB : torch::nn::Module {
  NetB() {
    hidden = register_module("hidden", torch::nn::Linear(3, 2));
    classifier = register_module("classifier", torch::nn::Linear(2, 4));
  }
  torch::nn::Linear hidden{nullptr}, classifier{nullptr};
};

bool Check(bool ok, const char* what) {
  std::printf("%s: %s\n", what, ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ckpt::client;
  std::string server;
  if (int exit = ckpt_examples::ParseServerArg(
          argc, argv,
          "The tutorial's state_dict recipes: warm start with strict=false, several models in "
          "one checkpoint, a module.-prefixed state_dict.",
          &server);
      exit >= 0) {
    return exit;
  }
  auto connected = Client::Connect(server, {});
  if (!connected.ok()) {
    std::fprintf(stderr, "%s\n", connected.status().ToString().c_str());
    return 1;
  }
  Client& client = **connected;
  bool ok = true;

  // 1. Warm-start: B takes A's "hidden" layer, ignores A's "output".
  auto a = std::make_shared<NetA>();
  if (!client.Save("examples/recipes/model_a", StateDict(*a), {}).ok()) return 1;
  auto b = std::make_shared<NetB>();
  auto keys = client.LoadInto("examples/recipes/model_a", *b, "", /*strict=*/false, {});
  if (!keys.ok()) {
    std::fprintf(stderr, "warm start: %s\n", keys.status().ToString().c_str());
    return 1;
  }
  std::printf("warm start: missing [%s], unexpected [%s]\n",
              absl::StrJoin(keys->missing_keys, ", ").c_str(),
              absl::StrJoin(keys->unexpected_keys, ", ").c_str());
  ok &= Check(b->hidden->weight.equal(a->hidden->weight), "warm start copies 'hidden'");
  ok &= Check(keys->unexpected_keys == std::vector<std::string>{"output.weight", "output.bias"},
              "warm start reports A's head as unexpected");

  // 2. Two models and two optimizers in one checkpoint.
  torch::optim::SGD opt_a(a->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  torch::optim::Adam opt_b(b->parameters(), torch::optim::AdamOptions(0.001));
  TrainingCheckpoint both;
  both.epoch = 7;
  both.models = {{"modelA_state_dict", a.get()}, {"modelB_state_dict", b.get()}};
  both.optimizers = {{"optimizerA_state_dict", &opt_a}, {"optimizerB_state_dict", &opt_b}};
  if (!SaveTrainingCheckpoint(client, "examples/recipes/gan", both, {}).ok()) return 1;
  auto a2 = std::make_shared<NetA>();
  auto b2 = std::make_shared<NetB>();
  torch::optim::SGD opt_a2(a2->parameters(), torch::optim::SGDOptions(0.5));
  torch::optim::Adam opt_b2(b2->parameters(), torch::optim::AdamOptions(0.5));
  TrainingCheckpoint back;
  back.models = {{"modelA_state_dict", a2.get()}, {"modelB_state_dict", b2.get()}};
  back.optimizers = {{"optimizerA_state_dict", &opt_a2}, {"optimizerB_state_dict", &opt_b2}};
  absl::Status status = LoadTrainingCheckpoint(client, "examples/recipes/gan", back, true, {});
  if (!status.ok()) {
    std::fprintf(stderr, "two models: %s\n", status.ToString().c_str());
    return 1;
  }
  ok &= Check(a2->output->weight.equal(a->output->weight) &&
                  b2->classifier->weight.equal(b->classifier->weight) && back.epoch == 7,
              "two models restored");
  const auto& sgd = static_cast<torch::optim::SGDOptions&>(opt_a2.param_groups()[0].options());
  const auto& adam = static_cast<torch::optim::AdamOptions&>(opt_b2.param_groups()[0].options());
  ok &= Check(sgd.lr() == 0.01 && sgd.momentum() == 0.9 && adam.lr() == 0.001,
              "two optimizers restored");

  // 3. A DataParallel checkpoint ("module." keys) into a plain model.
  c10::Dict<std::string, at::Tensor> parallel;
  for (const auto& e : StateDict(*a)) parallel.insert("module." + e.key(), e.value());
  if (!client.Save("examples/recipes/data_parallel", parallel, {}).ok()) return 1;
  auto plain = std::make_shared<NetA>();
  TorchLoadOptions strip;
  strip.rename.strip_prefix = "module.";
  auto dp = client.LoadInto("examples/recipes/data_parallel", *plain, "", true, strip);
  ok &= Check(dp.ok() && plain->hidden->weight.equal(a->hidden->weight),
              "module.-prefixed state_dict into a plain model");
  return ok ? 0 : 1;
}
