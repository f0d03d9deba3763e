#ifndef CKPT_TESTS_TESTING_SERVER_FIXTURE_H_
#define CKPT_TESTS_TESTING_SERVER_FIXTURE_H_

// An in-process ckpt server for tests: 127.0.0.1 with a port the kernel
// picks, its store in a fresh temporary directory, and a connected client
// core. The one copy of what service, bad-input, ops, auth, slice, client
// and GPU tests each used to set up by hand.
//
//   class MyTest : public testing::ServerTest {};
//   TEST_F(MyTest, Saves) { ASSERT_TRUE(client_->Save("a/b", tree, {}).ok()); }

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/raw_client.h"
#include "server/server.h"
#include "tests/testing/temp_dir.h"

namespace ckpt::testing {

/// Options of a test server with its store in `dir`/db: listen on
/// 127.0.0.1:0, 64 KiB chunks (small: tests cross chunk boundaries cheaply),
/// no metrics endpoint, no access control.
server::ServerOptions TestServerOptions(const std::string& dir);

/// "127.0.0.1:PORT" of a started server.
std::string AddressOf(const server::Server& server);

/// Fixture: SetUp starts a server with TestServerOptions (changed by
/// AdjustOptions) and connects `client_`; both fail the test if they fail.
class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(); }

  /// Starts (again) on the same store, with `adjust` applied to the options
  /// after AdjustOptions.
  void StartServer(const std::function<void(server::ServerOptions&)>& adjust = {});
  /// Stops the client and the server, then starts both again on the store.
  void RestartServer(const std::function<void(server::ServerOptions&)>& adjust = {});
  /// Hook for a fixture's own defaults (chunk size, worker threads...).
  virtual void AdjustOptions(server::ServerOptions& options) {}

  std::string address() const { return AddressOf(*server_); }
  /// A new client core connected to the server; fails the test if it cannot
  /// connect (null then).
  std::unique_ptr<client::RawClient> Connect(const client::ClientOptions& options = {});

  TempDir dir_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<client::RawClient> client_;
};

}  // namespace ckpt::testing

#endif  // CKPT_TESTS_TESTING_SERVER_FIXTURE_H_
