// The tutorial's "save and load a general checkpoint for inference or
// resuming training", against a ckpt server:
//   net = MLP(Linear(3,2), ReLU, Linear(2,1)); SGD(lr=0.001, momentum=0.9)
//   train 5 epochs, save {epoch, model_state_dict, optimizer_state_dict, loss},
//   restore into fresh objects, train 5 more epochs,
// and check the losses match an uninterrupted 10-epoch run exactly.
//
// Usage: mlp_checkpoint [HOST:PORT]    (default localhost:50051)

#include <torch/torch.h>

#include <cstdio>

#include "client/client.h"
#include "examples/server_arg.h"

namespace {

struct Net : torch::nn::Module {
  Net() {
    fc1 = register_module("fc1", torch::nn::Linear(3, 2));
    fc2 = register_module("fc2", torch::nn::Linear(2, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

// One epoch over a fixed synthetic dataset; returns the last loss.
double Epoch(Net& net, torch::optim::SGD& optimizer, int epoch) {
  double last = 0;
  for (int batch = 0; batch < 10; ++batch) {
    torch::manual_seed(epoch * 100 + batch);
    torch::Tensor x = torch::randn({16, 3});
    torch::Tensor y = (x * torch::tensor({0.5, -1.0, 2.0})).sum(1, true);
    optimizer.zero_grad();
    torch::Tensor loss = torch::mse_loss(net.forward(x), y);
    loss.backward();
    optimizer.step();
    last = loss.item<double>();
  }
  return last;
}

}  // namespace

int main(int argc, char** argv) {
  std::string server;
  if (int exit = ckpt_examples::ParseServerArg(
          argc, argv,
          "Trains the tutorial's MLP, checkpoints it at epoch 5 and resumes in fresh objects.",
          &server);
      exit >= 0) {
    return exit;
  }
  auto client = ckpt::client::Client::Connect(server, {});
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }

  // Uninterrupted reference run: 10 epochs.
  torch::manual_seed(0);
  auto reference = std::make_shared<Net>();
  torch::optim::SGD reference_opt(reference->parameters(),
                                  torch::optim::SGDOptions(0.001).momentum(0.9));
  std::vector<double> expected;
  for (int epoch = 0; epoch < 10; ++epoch)
    expected.push_back(Epoch(*reference, reference_opt, epoch));

  // Interrupted run: 5 epochs, checkpoint, fresh objects, 5 more.
  torch::manual_seed(0);
  auto net = std::make_shared<Net>();
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.001).momentum(0.9));
  double loss = 0;
  for (int epoch = 0; epoch < 5; ++epoch) loss = Epoch(*net, optimizer, epoch);

  ckpt::client::TrainingCheckpoint checkpoint;
  checkpoint.epoch = 5;
  checkpoint.loss = loss;
  checkpoint.models = {{"model_state_dict", net.get()}};
  checkpoint.optimizers = {{"optimizer_state_dict", &optimizer}};
  auto saved =
      ckpt::client::SaveTrainingCheckpoint(**client, "examples/tutorial/mlp", checkpoint, {});
  if (!saved.ok()) {
    std::fprintf(stderr, "save: %s\n", saved.status().ToString().c_str());
    return 1;
  }
  std::printf("saved examples/tutorial/mlp version %llu at epoch 5, loss %.6f\n",
              static_cast<unsigned long long>(saved->version.version), loss);

  auto model = std::make_shared<Net>();  // fresh, randomly initialized
  torch::optim::SGD model_opt(model->parameters(), torch::optim::SGDOptions(0.1));
  ckpt::client::TrainingCheckpoint restored;
  restored.models = {{"model_state_dict", model.get()}};
  restored.optimizers = {{"optimizer_state_dict", &model_opt}};
  absl::Status status = ckpt::client::LoadTrainingCheckpoint(**client, "examples/tutorial/mlp",
                                                             restored, /*strict=*/true, {});
  if (!status.ok()) {
    std::fprintf(stderr, "load: %s\n", status.ToString().c_str());
    return 1;
  }
  model->train();
  std::printf("restored epoch %lld, loss %.6f\n", static_cast<long long>(restored.epoch),
              restored.loss);

  bool same = restored.loss == expected[4];
  for (int epoch = static_cast<int>(restored.epoch); epoch < 10; ++epoch) {
    const double l = Epoch(*model, model_opt, epoch);
    std::printf("epoch %d loss %.9f (uninterrupted %.9f)\n", epoch, l, expected[epoch]);
    same = same && l == expected[epoch];
  }
  std::printf(same ? "losses match the uninterrupted run exactly\n"
                   : "LOSSES DIFFER from the uninterrupted run\n");
  return same ? 0 : 1;
}
