// The LibTorch examples as a user runs them, against the real ckpt-server.

#include <gtest/gtest.h>

#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"

namespace ckpt {
namespace {

class ExamplesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = testing::ServerProcess::Start(dir_.path() + "/db");
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }
  testing::TempDir dir_;
  std::unique_ptr<testing::ServerProcess> server_;
};

TEST_F(ExamplesTest, TutorialMlpResumesWithIdenticalLosses) {
  auto run = testing::RunCommand({CKPT_MLP_EXAMPLE, server_->address()});
  ASSERT_EQ(run.exit_code, 0) << run.out << run.err;
  EXPECT_NE(run.out.find("saved examples/tutorial/mlp version 1 at epoch 5"), std::string::npos)
      << run.out;
  EXPECT_NE(run.out.find("restored epoch 5"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("losses match the uninterrupted run exactly"), std::string::npos)
      << run.out;
}

TEST_F(ExamplesTest, WarmStartTwoModelsAndDataParallelPrefix) {
  auto run = testing::RunCommand({CKPT_RECIPES_EXAMPLE, server_->address()});
  ASSERT_EQ(run.exit_code, 0) << run.out << run.err;
  EXPECT_NE(run.out.find("warm start: missing [classifier.weight, classifier.bias], "
                         "unexpected [output.weight, output.bias]"),
            std::string::npos)
      << run.out;
  EXPECT_EQ(run.out.find("FAILED"), std::string::npos) << run.out;
}

}  // namespace
}  // namespace ckpt
