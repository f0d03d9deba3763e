#include "tests/testing/server_fixture.h"

#include "absl/strings/str_cat.h"

namespace ckpt::testing {

server::ServerOptions TestServerOptions(const std::string& dir) {
  server::ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.store.path = dir + "/db";
  options.chunk_size = 64 << 10;
  options.metrics_listen = "";
  return options;
}

std::string AddressOf(const server::Server& server) {
  return absl::StrCat("127.0.0.1:", server.port());
}

void ServerTest::StartServer(const std::function<void(server::ServerOptions&)>& adjust) {
  server::ServerOptions options = TestServerOptions(dir_.path());
  AdjustOptions(options);
  if (adjust) adjust(options);
  auto server = server::Server::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  client_ = Connect();
  ASSERT_NE(client_, nullptr);
}

void ServerTest::RestartServer(const std::function<void(server::ServerOptions&)>& adjust) {
  client_.reset();
  server_.reset();
  StartServer(adjust);
}

std::unique_ptr<client::RawClient> ServerTest::Connect(const client::ClientOptions& options) {
  auto client = client::RawClient::Connect(address(), options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

}  // namespace ckpt::testing
