// Optimizer state_dicts in PyTorch's layout: saved mid-training, restored into
// fresh objects, training continues bit-identically.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "server/server.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::client {
namespace {

torch::nn::Sequential MakeModel() {
  return torch::nn::Sequential(torch::nn::Linear(3, 4), torch::nn::ReLU(), torch::nn::Linear(4, 1));
}

struct Case {
  std::string name;
  std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<at::Tensor>)> make;
  std::vector<std::string> state_keys;  // per-parameter state PyTorch has
  std::vector<std::string> group_keys;  // some hyperparameters PyTorch has
};

std::vector<Case> Cases() {
  return {
      {"sgd",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::SGD>(
             p, torch::optim::SGDOptions(0.01).momentum(0.9).nesterov(true));
       },
       {"momentum_buffer"},
       {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"}},
      {"adam",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(0.01));
       },
       {"step", "exp_avg", "exp_avg_sq"},
       {"lr", "betas", "eps", "weight_decay", "amsgrad"}},
      {"adamw_amsgrad",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::AdamW>(
             p, torch::optim::AdamWOptions(0.01).amsgrad(true));
       },
       {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"},
       {"lr", "betas", "eps", "weight_decay", "amsgrad"}},
      {"adagrad",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::Adagrad>(p, torch::optim::AdagradOptions(0.1));
       },
       {"step", "sum"},
       {"lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"}},
      {"rmsprop",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::RMSprop>(
             p, torch::optim::RMSpropOptions(0.01).momentum(0.5).centered(true));
       },
       {"step", "square_avg", "momentum_buffer", "grad_avg"},
       {"lr", "momentum", "alpha", "eps", "centered", "weight_decay"}},
  };
}

void Train(torch::nn::Sequential& model, torch::optim::Optimizer& optimizer, int from, int to) {
  for (int step = from; step < to; ++step) {
    torch::manual_seed(1000 + step);
    at::Tensor x = torch::randn({8, 3});
    at::Tensor y = x.sum(1, true);
    optimizer.zero_grad();
    at::Tensor loss = torch::mse_loss(model->forward(x), y);
    loss.backward();
    optimizer.step();
  }
}

class OptimizerTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    auto server = server::Server::Start(testing::TestServerOptions(dir_.path()));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Connect(testing::AddressOf(*server_), {});
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }
  testing::TempDir dir_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<Client> client_;
};

TEST_P(OptimizerTest, SaveRestoreContinueIsBitIdentical) {
  const Case c = Cases()[GetParam()];
  torch::manual_seed(0);
  auto model = MakeModel();
  auto optimizer = c.make(model->parameters());
  Train(model, *optimizer, 0, 3);

  TrainingCheckpoint ckpt;
  ckpt.epoch = 3;
  ckpt.loss = 0.5;
  ckpt.models = {{"model_state_dict", model.ptr().get()}};
  ckpt.optimizers = {{"optimizer_state_dict", optimizer.get()}};
  auto saved = SaveTrainingCheckpoint(*client_, "opt/" + c.name, ckpt, {});
  ASSERT_TRUE(saved.ok()) << saved.status();

  // The layout PyTorch uses.
  c10::IValue value = client_->Load("opt/" + c.name, {}).value();
  auto opt_sd = value.toGenericDict().at("optimizer_state_dict").toGenericDict();
  auto state = opt_sd.at("state").toGenericDict();
  ASSERT_EQ(state.size(), 4u);
  int64_t expect_index = 0;
  for (const auto& entry : state) {
    EXPECT_EQ(entry.key().toInt(), expect_index++);
    auto per_param = entry.value().toGenericDict();
    std::vector<std::string> keys;
    for (const auto& e : per_param) keys.push_back(e.key().toStringRef());
    EXPECT_EQ(keys, c.state_keys);
  }
  auto groups = opt_sd.at("param_groups").toListRef();
  ASSERT_EQ(groups.size(), 1u);
  auto group = groups[0].toGenericDict();
  for (const auto& k : c.group_keys) EXPECT_TRUE(group.contains(k)) << k;
  EXPECT_EQ(group.at("params").toIntVector(), (std::vector<int64_t>{0, 1, 2, 3}));

  // Uninterrupted reference run.
  Train(model, *optimizer, 3, 6);

  // Fresh objects, restored, continue the same steps.
  torch::manual_seed(42);
  auto fresh = MakeModel();
  auto fresh_opt = c.make(fresh->parameters());
  TrainingCheckpoint restored;
  restored.models = {{"model_state_dict", fresh.ptr().get()}};
  restored.optimizers = {{"optimizer_state_dict", fresh_opt.get()}};
  absl::Status status = LoadTrainingCheckpoint(*client_, "opt/" + c.name, restored, true, {});
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(restored.epoch, 3);
  EXPECT_EQ(restored.loss, 0.5);
  Train(fresh, *fresh_opt, 3, 6);
  auto a = model->parameters();
  auto b = fresh->parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(a[i].equal(b[i])) << "parameter " << i;
}

INSTANTIATE_TEST_SUITE_P(All, OptimizerTest, ::testing::Range(0, 5),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return Cases()[info.param].name;
                         });

TEST(OptimizerStateTest, MismatchedParameterCountIsRejected) {
  auto small = torch::nn::Linear(2, 2);
  auto big = MakeModel();
  torch::optim::Adam a(small->parameters(), torch::optim::AdamOptions(0.1));
  torch::optim::Adam b(big->parameters(), torch::optim::AdamOptions(0.1));
  auto state = OptimizerStateDict(a);
  ASSERT_TRUE(state.ok());
  absl::Status s = LoadOptimizerStateDict(b, *state);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("parameter group 0 has 4 parameters"), std::string::npos) << s;
}

}  // namespace
}  // namespace ckpt::client
