// GPU saves and restores: tensors staged through pinned host buffers.
// Always compiled; every test skips with a reason where no CUDA device is
// present (as on the build machines).

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "server/server.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::client {
namespace {

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) {
      GTEST_SKIP() << "no CUDA device here (torch::cuda::is_available() is false)";
    }
    server::ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.store.path = dir_.path() + "/db";
    options.chunk_size = 1 << 20;
    auto server = server::Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    client_ = *Client::Connect(absl::StrCat("127.0.0.1:", server_->port()), {});
  }

  testing::TempDir dir_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(GpuTest, SaveFromGpuRestoreToGpuAndCpu) {
  torch::manual_seed(0);
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("big", torch::randn({9, 1024, 1024}, torch::kCUDA));  // 36 MiB: many chunks
  sd.insert("half", torch::randn({333}, torch::kCUDA).to(torch::kHalf));
  sd.insert("transposed", torch::randn({64, 32}, torch::kCUDA).t());
  auto saved = client_->Save("gpu/sd", sd, {});
  ASSERT_TRUE(saved.ok()) << saved.status();
  auto manifest = client_->raw().GetManifest("gpu/sd", 0, "");
  ASSERT_TRUE(manifest.ok());
  EXPECT_EQ(manifest->tree[1].tensor.device, "cuda:0");

  auto back = client_->Load("gpu/sd", {});
  ASSERT_TRUE(back.ok()) << back.status();
  for (const auto& e : sd) {
    at::Tensor t = back->toGenericDict().at(e.key()).toTensor();
    EXPECT_TRUE(t.is_cuda()) << e.key();
    EXPECT_TRUE(t.equal(e.value())) << e.key();
  }
  TorchLoadOptions to_cpu;
  to_cpu.map_location = MapLocation::To("cpu");
  auto cpu = client_->Load("gpu/sd", to_cpu);
  ASSERT_TRUE(cpu.ok());
  EXPECT_TRUE(cpu->toGenericDict().at("big").toTensor().is_cpu());
  EXPECT_TRUE(cpu->toGenericDict().at("big").toTensor().equal(sd.at("big").cpu()));
}

TEST_F(GpuTest, CpuCheckpointIntoGpuModuleInPlace) {
  auto cpu_model = torch::nn::Linear(512, 512);
  ASSERT_TRUE(client_->Save("gpu/linear", StateDict(*cpu_model), {}).ok());
  auto gpu_model = torch::nn::Linear(512, 512);
  gpu_model->to(torch::kCUDA);
  const void* memory = gpu_model->weight.data_ptr();
  auto keys = client_->LoadInto("gpu/linear", *gpu_model, "", true, {});
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(gpu_model->weight.data_ptr(), memory);
  EXPECT_TRUE(gpu_model->weight.cpu().equal(cpu_model->weight));
}

TEST_F(GpuTest, AsyncSaveSnapshotsGpuTensors) {
  at::Tensor w = torch::randn({1 << 20}, torch::kCUDA);
  at::Tensor before = w.cpu();
  c10::Dict<std::string, at::Tensor> sd;
  sd.insert("w", w);
  auto future = client_->SaveAsync("gpu/async", sd, {});
  w.add_(1.0);
  ASSERT_TRUE(future.get().ok());
  TorchLoadOptions to_cpu;
  to_cpu.map_location = MapLocation::To("cpu");
  EXPECT_TRUE(client_->Load("gpu/async", to_cpu)->toGenericDict().at("w").toTensor().equal(before));
}

}  // namespace
}  // namespace ckpt::client
