// Access control and TLS end to end: bearer tokens against every RPC (codes
// and messages), listing filtered by the token's namespaces, TLS and mTLS
// with certificates openssl makes for the test, the CLI's token and TLS
// flags and environment variables, tokens kept out of the logs, SIGHUP
// reload and development mode.

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "ckpt/v1/checkpoint.grpc.pb.h"
#include "client/raw_client.h"
#include "server/server.h"
#include "tests/testing/server_fixture.h"
#include "tests/testing/server_process.h"
#include "tests/testing/temp_dir.h"
#include "tests/testing/trees.h"

namespace ckpt {
namespace {

using client::ClientOptions;
using client::RawClient;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kReader[] = "reader-8c2f41d7e9a04b6e";
constexpr char kWriter[] = "writer-3b9d0a51c7e24f88";
constexpr char kAdminA[] = "admin-a-5e17c2b9d8a3406f";
constexpr char kOps[] = "ops-a4f09e3c71b25d68";

std::string TokensText() {
  return absl::StrCat("# NAME  TOKEN  RIGHT  PREFIXES\n",         //
                      "reader  ", kReader, "  read   team-a\n",   //
                      "writer  ", kWriter, "  write  team-a/\n",  //
                      "admin-a ", kAdminA, "  admin  team-a\n",   //
                      "ops     ", kOps, "  admin  *\n");
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

testing::TreeBuilder SmallTree(uint64_t seed) {
  testing::TreeBuilder b;
  b.Dict(2).Int(5, std::string("epoch")).Tensor(std::string("w"), DType::kFloat32, {16, 16}, seed);
  return b;
}

// A fresh CA, a server certificate for localhost / 127.0.0.1, a client
// certificate, and a second CA nobody trusts, made with the openssl CLI.
struct Certificates {
  std::string dir, ca, server_cert, server_key, client_cert, client_key, rogue_ca,
      rogue_client_cert, rogue_client_key;
};

Certificates MakeCertificates(const std::string& dir) {
  const std::string script = R"(set -e
cd ")" + dir + R"("
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$1" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
leaf() {  # name ca ext
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
    -out "$1.pem" -days 2 -extfile "$1.ext" 2>/dev/null
}
ca ca
ca rogue
leaf server ca "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
leaf client ca "extendedKeyUsage=clientAuth"
leaf rogue-client rogue "extendedKeyUsage=clientAuth"
)";
  auto result = testing::RunCommand({"/bin/bash", "-c", script});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  Certificates c;
  c.dir = dir;
  c.ca = dir + "/ca.pem";
  c.server_cert = dir + "/server.pem";
  c.server_key = dir + "/server.key";
  c.client_cert = dir + "/client.pem";
  c.client_key = dir + "/client.key";
  c.rogue_ca = dir + "/rogue.pem";
  c.rogue_client_cert = dir + "/rogue-client.pem";
  c.rogue_client_key = dir + "/rogue-client.key";
  return c;
}

// ------------------------------------------------------------- tokens

class AuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(tokens_, TokensText());
    server::ServerOptions options = testing::TestServerOptions(dir_.path());
    options.tokens_file = tokens_;
    auto server = server::Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_FALSE(server_->development_mode());
    auto ops = Client(kOps);
    tree_ = SmallTree(1);
    ASSERT_TRUE(ops->Save("team-a/m", tree_.Input(), {}).ok());
    ASSERT_TRUE(ops->Save("other/m", tree_.Input(), {}).ok());
  }

  std::unique_ptr<RawClient> Client(const std::string& token) {
    ClientOptions options;
    options.token = token;
    auto c = RawClient::Connect(address(), options);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  std::string address() const { return testing::AddressOf(*server_); }

  testing::TempDir dir_;
  const std::string tokens_ = dir_.path() + "/tokens";
  std::unique_ptr<server::Server> server_;
  testing::TreeBuilder tree_;
};

// Every RPC of the service, each returning its status.
std::vector<std::pair<std::string, absl::Status>> CallEveryRpc(RawClient& c,
                                                               const client::SaveInput& input) {
  return {
      {"ListCheckpoints", c.ListCheckpoints("").status()},
      {"ListVersions", c.ListVersions("team-a/m").status()},
      {"GetManifest", c.GetManifest("team-a/m", 0, "").status()},
      {"Load", c.Load("team-a/m", {}).status()},
      {"Save", c.Save("team-a/m", input, {}).status()},
      {"SetTag", c.SetTag("team-a/m", "best", 1)},
      {"DeleteTag", c.DeleteTag("team-a/m", "best")},
      {"DeleteVersion", c.DeleteVersion("team-a/m", 1, false).status()},
      {"GetServerInfo", c.GetServerInfo().status()},
      {"GetUsage", c.GetUsage("team-a").status()},
      {"GarbageCollect", c.GarbageCollect().status()},
      {"SetRetention", c.SetRetention("team-a/m", {}).status()},
      {"GetRetention", c.GetRetention("team-a/m").status()},
      {"Prune", c.Prune("team-a/m", true).status()},
      {"Diff", c.Diff("team-a/m", 1, "", "", 1, "").status()},
  };
}

TEST_F(AuthTest, NoTokenOrABadTokenIsUnauthenticatedForEveryRpc) {
  for (const char* token : {"", "not-a-valid-token-at-all"}) {
    auto c = Client(token);
    for (const auto& [rpc, status] : CallEveryRpc(*c, tree_.Input())) {
      SCOPED_TRACE(absl::StrCat(rpc, " with token '", token, "'"));
      EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated) << status;
      EXPECT_EQ(status.message(),
                *token ? "invalid token"
                       : "missing bearer token: send the metadata 'authorization: Bearer <token>'");
    }
    // Health stays open: load balancers and probes carry no token.
    EXPECT_TRUE(c->Health().ok());
  }
  // Nothing changed.
  auto versions = Client(kOps)->ListVersions("team-a/m");
  ASSERT_TRUE(versions.ok());
  EXPECT_EQ(versions->size(), 1u);
}

TEST_F(AuthTest, EachRpcNeedsItsRightOnTheName) {
  auto reader = Client(kReader);
  auto writer = Client(kWriter);
  auto admin = Client(kAdminA);
  auto ops = Client(kOps);
  auto denied = [](const absl::Status& s, const std::string& message) {
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
    EXPECT_EQ(s.message(), message);
  };

  // read: Load, ListVersions, GetManifest; GetServerInfo for any token.
  EXPECT_TRUE(reader->Load("team-a/m", {}).ok());
  EXPECT_TRUE(reader->ListVersions("team-a/m").ok());
  EXPECT_TRUE(reader->GetManifest("team-a/m", 1, "").ok());
  EXPECT_TRUE(reader->GetServerInfo().ok());
  denied(reader->Load("other/m", {}).status(), "token 'reader' has no read right on 'other/m'");
  denied(reader->ListVersions("other/m").status(), "token 'reader' has no read right on 'other/m'");
  denied(reader->GetManifest("other/m", 0, "").status(),
         "token 'reader' has no read right on 'other/m'");
  // Diff: read on both names.
  EXPECT_TRUE(reader->Diff("team-a/m", 1, "", "", 1, "").ok());
  denied(reader->Diff("team-a/m", 1, "", "other/m", 1, "").status(),
         "token 'reader' has no read right on 'other/m'");
  denied(reader->Save("team-a/new", tree_.Input(), {}).status(),
         "token 'reader' has no write right on 'team-a/new'");
  denied(reader->SetTag("team-a/m", "best", 1), "token 'reader' has no write right on 'team-a/m'");
  EXPECT_TRUE(reader->GetRetention("team-a/m").ok());
  denied(reader->GetRetention("other/m").status(), "token 'reader' has no read right on 'other/m'");
  // GetUsage: read on the whole namespace, whatever name in it is given.
  auto usage = reader->GetUsage("team-a/m");
  ASSERT_TRUE(usage.ok()) << usage.status();
  EXPECT_EQ(usage->ns, "team-a");
  EXPECT_GT(usage->used_bytes, 0u);
  EXPECT_EQ(usage->quota_bytes, 0u);
  denied(reader->GetUsage("other/m").status(), "token 'reader' has no read right on 'other'");

  // write: Save, SetTag, DeleteTag; not DeleteVersion (admin).
  auto saved = writer->Save("team-a/m", SmallTree(2).Input(), {});
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(saved->version.version, 2u);
  EXPECT_TRUE(writer->SetTag("team-a/m", "best", 1).ok());
  EXPECT_TRUE(writer->DeleteTag("team-a/m", "best").ok());
  denied(writer->DeleteVersion("team-a/m", 1, false).status(),
         "token 'writer' has no admin right on 'team-a/m'");
  // Retention deletes versions: admin, like DeleteVersion.
  RetentionPolicy keep_one;
  keep_one.keep_last = 1;
  denied(writer->SetRetention("team-a/m", keep_one).status(),
         "token 'writer' has no admin right on 'team-a/m'");
  denied(writer->Prune("team-a/m", true).status(),
         "token 'writer' has no admin right on 'team-a/m'");
  denied(writer->Save("other/x", tree_.Input(), {}).status(),
         "token 'writer' has no write right on 'other/x'");
  // "team-a" does not cover "team-ab".
  denied(writer->Save("team-ab/x", tree_.Input(), {}).status(),
         "token 'writer' has no write right on 'team-ab/x'");

  // admin on the namespace: DeleteVersion there; GarbageCollect needs "*".
  EXPECT_TRUE(admin->DeleteVersion("team-a/m", 1, false).ok());
  EXPECT_TRUE(admin->SetRetention("team-a/m", {}).ok());
  EXPECT_TRUE(admin->Prune("team-a/m", true).ok());
  denied(admin->DeleteVersion("other/m", 1, false).status(),
         "token 'admin-a' has no admin right on 'other/m'");
  denied(admin->GarbageCollect().status(),
         "token 'admin-a' may not collect garbage: that needs admin on '*'");
  EXPECT_TRUE(ops->GarbageCollect().ok());

  // Refused saves left nothing.
  for (const char* name : {"team-a/new", "other/x", "team-ab/x"}) {
    EXPECT_EQ(ops->ListVersions(name).status().code(), absl::StatusCode::kNotFound) << name;
  }
  // Invalid names stay INVALID_ARGUMENT, whoever asks.
  EXPECT_EQ(reader->Load("bad//name", {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AuthTest, ListCheckpointsShowsOnlyReadableNames) {
  auto ops = Client(kOps);
  for (const char* name : {"team-a/x", "team-a/y", "team-ab/z", "team-a"}) {
    ASSERT_TRUE(ops->Save(name, tree_.Input(), {}).ok()) << name;
  }
  auto names = [](const absl::StatusOr<std::vector<CheckpointSummary>>& list) {
    std::vector<std::string> out;
    if (list.ok()) {
      for (const auto& c : *list) out.push_back(c.name);
    }
    return out;
  };
  auto reader = Client(kReader);
  EXPECT_THAT(names(reader->ListCheckpoints("")),
              ElementsAre("team-a", "team-a/m", "team-a/x", "team-a/y"));
  EXPECT_THAT(names(reader->ListCheckpoints("team")),
              ElementsAre("team-a", "team-a/m", "team-a/x", "team-a/y"));
  EXPECT_THAT(names(reader->ListCheckpoints("team-a/")),
              ElementsAre("team-a/m", "team-a/x", "team-a/y"));
  auto other = reader->ListCheckpoints("other/");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(other.status().message(),
            "token 'reader' has no read right on any name under 'other/'");
  EXPECT_THAT(names(ops->ListCheckpoints("")),
              ElementsAre("other/m", "team-a", "team-a/m", "team-a/x", "team-a/y", "team-ab/z"));

  // Pages of a filtered listing follow each other without gaps.
  auto channel = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
  auto stub = v1::CheckpointService::NewStub(channel);
  std::vector<std::string> paged;
  std::string token;
  int pages = 0;
  do {
    grpc::ClientContext context;
    context.AddMetadata("authorization", absl::StrCat("Bearer ", kReader));
    v1::ListCheckpointsRequest request;
    request.set_page_size(3);
    request.set_page_token(token);
    v1::ListCheckpointsResponse response;
    grpc::Status status = stub->ListCheckpoints(&context, request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    for (const auto& c : response.checkpoints()) paged.push_back(c.name());
    token = response.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 2);
  EXPECT_THAT(paged, ElementsAre("team-a", "team-a/m", "team-a/x", "team-a/y"));
}

// ---------------------------------------------------------------- TLS

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_dir_ = new testing::TempDir();
    certs_ = new Certificates(MakeCertificates(certs_dir_->path()));
  }
  static void TearDownTestSuite() {
    delete certs_;
    delete certs_dir_;
  }

  void StartServer(bool require_client_cert) {
    WriteFile(dir_.path() + "/tokens", TokensText());
    server::ServerOptions options = testing::TestServerOptions(dir_.path());
    options.tokens_file = dir_.path() + "/tokens";
    options.tls_cert_file = certs_->server_cert;
    options.tls_key_file = certs_->server_key;
    if (require_client_cert) options.tls_client_ca_file = certs_->ca;
    auto server = server::Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  ClientOptions Tls() const {
    ClientOptions options;
    options.connect_timeout = absl::Seconds(3);
    options.token = kOps;
    options.tls = true;
    options.tls_ca_file = certs_->ca;
    return options;
  }

  absl::StatusOr<std::unique_ptr<RawClient>> Connect(const ClientOptions& options,
                                                     const std::string& host = "127.0.0.1") {
    return RawClient::Connect(absl::StrCat(host, ":", server_->port()), options);
  }

  // Saves and loads back through `options`.
  void ExpectWorks(const ClientOptions& options, const std::string& host = "127.0.0.1") {
    auto c = Connect(options, host);
    ASSERT_TRUE(c.ok()) << c.status();
    auto tree = SmallTree(3);
    auto saved = (*c)->Save("team-a/tls", tree.Input(), {});
    ASSERT_TRUE(saved.ok()) << saved.status();
    auto loaded = (*c)->Load("team-a/tls", {});
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->data[2], tree.data(2));
  }

  static testing::TempDir* certs_dir_;
  static Certificates* certs_;
  testing::TempDir dir_;
  std::unique_ptr<server::Server> server_;
};

testing::TempDir* TlsTest::certs_dir_ = nullptr;
Certificates* TlsTest::certs_ = nullptr;

TEST_F(TlsTest, ServesClientsThatTrustItsCa) {
  StartServer(/*require_client_cert=*/false);
  ExpectWorks(Tls());
  ExpectWorks(Tls(), "localhost");
  // Without TLS, with a CA that did not sign the server's certificate, or
  // expecting another name: no connection.
  ClientOptions plaintext;
  plaintext.connect_timeout = absl::Seconds(2);
  EXPECT_EQ(Connect(plaintext).status().code(), absl::StatusCode::kUnavailable);
  ClientOptions rogue = Tls();
  rogue.tls_ca_file = certs_->rogue_ca;
  auto refused = Connect(rogue);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("(TLS: check"));
  ClientOptions other_name = Tls();
  other_name.tls_server_name = "ckpt.example.com";
  EXPECT_EQ(Connect(other_name).status().code(), absl::StatusCode::kUnavailable);
  // The token is still required over TLS.
  ClientOptions no_token = Tls();
  no_token.token.clear();
  auto c = Connect(no_token);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->ListCheckpoints("").status().code(), absl::StatusCode::kUnauthenticated);
  // Bad settings are refused before connecting.
  ClientOptions missing = Tls();
  missing.tls_ca_file = certs_->dir + "/nope.pem";
  EXPECT_EQ(Connect(missing).status().code(), absl::StatusCode::kNotFound);
  ClientOptions half = Tls();
  half.tls_cert_file = certs_->client_cert;
  EXPECT_EQ(Connect(half).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TlsTest, MutualTlsNeedsAClientCertificateFromTheCa) {
  StartServer(/*require_client_cert=*/true);
  ClientOptions with_cert = Tls();
  with_cert.tls_cert_file = certs_->client_cert;
  with_cert.tls_key_file = certs_->client_key;
  ExpectWorks(with_cert);
  EXPECT_EQ(Connect(Tls()).status().code(), absl::StatusCode::kUnavailable);
  ClientOptions rogue = Tls();
  rogue.tls_cert_file = certs_->rogue_client_cert;
  rogue.tls_key_file = certs_->rogue_client_key;
  EXPECT_EQ(Connect(rogue).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(TlsTest, ServerRefusesIncompleteTlsSettings) {
  server::ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.store.path = dir_.path() + "/db";
  options.tls_cert_file = certs_->server_cert;
  auto s = server::Server::Start(options);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.status().message(), "TLS needs both a certificate and a key (--tls-cert, --tls-key)");
  options.tls_cert_file.clear();
  options.tls_client_ca_file = certs_->ca;
  EXPECT_EQ(server::Server::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.tls_client_ca_file.clear();
  options.tokens_file = dir_.path() + "/no-such-tokens";
  auto no_tokens = server::Server::Start(options);
  EXPECT_EQ(no_tokens.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(no_tokens.status().message()), HasSubstr("no-such-tokens"));
}

// -------------------------------------------- the binaries, as users run them

TEST_F(TlsTest, CliTakesTokenAndTlsFromFlagsAndEnvironment) {
  WriteFile(dir_.path() + "/tokens", TokensText());
  auto server = testing::ServerProcess::Start(
      dir_.path() + "/db", {"--tokens-file", dir_.path() + "/tokens", "--tls-cert",
                            certs_->server_cert, "--tls-key", certs_->server_key});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  const std::string cli = testing::CliBinary();
  const std::string token_file = dir_.path() + "/writer-token";
  WriteFile(token_file, absl::StrCat(kWriter, "\n"));
  const std::string input = dir_.path() + "/input.bin";
  WriteFile(input, "weights");

  // Flags.
  auto put = testing::RunCommand({cli, "--server", address, "--ca-cert", certs_->ca, "--token-file",
                                  token_file, "put", "team-a/file", input});
  EXPECT_EQ(put.exit_code, 0) << put.err;
  // Environment variables.
  const std::vector<std::string> env = {absl::StrCat("CKPT_SERVER=", address),
                                        absl::StrCat("CKPT_TOKEN=", kReader), "CKPT_TLS=1",
                                        absl::StrCat("CKPT_CA_CERT=", certs_->ca)};
  auto get = testing::RunCommand({cli, "get", "team-a/file", dir_.path() + "/out.bin"}, env);
  EXPECT_EQ(get.exit_code, 0) << get.err;
  EXPECT_EQ(ReadFile(dir_.path() + "/out.bin"), "weights");
  auto ls = testing::RunCommand({cli, "ls"}, env);
  EXPECT_EQ(ls.exit_code, 0) << ls.err;
  EXPECT_THAT(ls.out, HasSubstr("team-a/file"));

  // Refusals: exit code 7, the server's code and message.
  auto no_token =
      testing::RunCommand({cli, "--server", address, "--tls", "--ca-cert", certs_->ca, "ls"});
  EXPECT_EQ(no_token.exit_code, 7);
  EXPECT_EQ(no_token.err,
            "ckpt: UNAUTHENTICATED: missing bearer token: send the metadata 'authorization: "
            "Bearer <token>'\n");
  auto wrong_ns = testing::RunCommand({cli, "--server", address, "--ca-cert", certs_->ca,
                                       "--token-file", token_file, "put", "other/file", input});
  EXPECT_EQ(wrong_ns.exit_code, 7);
  EXPECT_EQ(wrong_ns.err,
            "ckpt: PERMISSION_DENIED: token 'writer' has no write right on "
            "'other/file'\n");
  auto missing_file = testing::RunCommand({cli, "--server", address, "--ca-cert", certs_->ca,
                                           "--token-file", dir_.path() + "/nope", "ls"});
  EXPECT_EQ(missing_file.exit_code, 3);
  EXPECT_THAT(missing_file.err, HasSubstr("cannot read token file"));
  // Health needs no token.
  auto health = testing::RunCommand({cli, "--server", address, "--ca-cert", certs_->ca, "health"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_EQ(health.out, "SERVING\n");

  // The log names principals, never tokens.
  const std::string log = (*server)->Log();
  EXPECT_THAT(log, HasSubstr("listening on port"));
  EXPECT_THAT(log, HasSubstr(", TLS), data in "));  // "listening on port N (ADDR, TLS)"
  EXPECT_THAT(log, Not(HasSubstr("DEVELOPMENT MODE")));
  EXPECT_THAT(log, HasSubstr("method=Save checkpoint=team-a/file version=1"));
  EXPECT_THAT(log, HasSubstr("principal=writer"));
  EXPECT_THAT(log, HasSubstr("principal=reader"));
  EXPECT_THAT(log, HasSubstr("level=warn msg=rpc method=Save checkpoint=other/file"));
  EXPECT_THAT(log, HasSubstr("status=PERMISSION_DENIED"));
  EXPECT_THAT(log, HasSubstr("status=UNAUTHENTICATED"));
  for (const char* token : {kReader, kWriter, kAdminA, kOps}) {
    EXPECT_THAT(log, Not(HasSubstr(token)));
  }
}

// The token is the first given of --token, --token-file, CKPT_TOKEN,
// CKPT_TOKEN_FILE: explicit flags win over the environment.
TEST_F(TlsTest, CliTokenPrecedenceFlagsBeforeEnvironment) {
  WriteFile(dir_.path() + "/tokens", TokensText());
  auto server = testing::ServerProcess::Start(
      dir_.path() + "/db", {"--tokens-file", dir_.path() + "/tokens", "--tls-cert",
                            certs_->server_cert, "--tls-key", certs_->server_key});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string cli = testing::CliBinary();
  const std::string writer_file = dir_.path() + "/writer-token";
  const std::string reader_file = dir_.path() + "/reader-token";
  WriteFile(writer_file, kWriter);
  WriteFile(reader_file, kReader);
  const std::string input = dir_.path() + "/input.bin";
  WriteFile(input, "weights");
  const std::vector<std::string> base = {absl::StrCat("CKPT_SERVER=", (*server)->address()),
                                         absl::StrCat("CKPT_CA_CERT=", certs_->ca)};
  // A put succeeds only with the writer's token: which token was used.
  auto put = [&](std::vector<std::string> flags, std::vector<std::string> env) {
    std::vector<std::string> argv = {cli};
    argv.insert(argv.end(), flags.begin(), flags.end());
    argv.insert(argv.end(), {"put", "team-a/precedence", input});
    env.insert(env.end(), base.begin(), base.end());
    return testing::RunCommand(argv, env);
  };
  const std::string env_reader = absl::StrCat("CKPT_TOKEN=", kReader);
  const std::string env_writer = absl::StrCat("CKPT_TOKEN=", kWriter);
  const std::string env_reader_file = absl::StrCat("CKPT_TOKEN_FILE=", reader_file);
  const std::string env_writer_file = absl::StrCat("CKPT_TOKEN_FILE=", writer_file);
  struct Case {
    std::vector<std::string> flags, env;
    int exit_code;
  };
  const std::vector<Case> cases = {
      {{"--token", kWriter, "--token-file", reader_file}, {}, 0},  // --token first
      {{"--token-file", writer_file}, {env_reader}, 0},            // flag over CKPT_TOKEN
      {{"--token-file", reader_file}, {env_writer}, 7},            // the same, refused
      {{"--token", kReader}, {env_writer, env_writer_file}, 7},    // flag over both
      {{}, {env_writer, env_reader_file}, 0},                      // CKPT_TOKEN first
      {{}, {env_reader, env_writer_file}, 7},                      // the same, refused
      {{}, {env_writer_file}, 0},                                  // CKPT_TOKEN_FILE last
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("case ", i));
    auto r = put(cases[i].flags, cases[i].env);
    EXPECT_EQ(r.exit_code, cases[i].exit_code) << r.err;
    if (cases[i].exit_code == 7) {
      EXPECT_EQ(r.err,
                "ckpt: PERMISSION_DENIED: token 'reader' has no write right on "
                "'team-a/precedence'\n");
    }
  }
  // The precedence is in --help.
  auto help = testing::RunCommand({cli, "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("Token: the first given of --token, --token-file, CKPT_TOKEN, "
                                  "CKPT_TOKEN_FILE\n(flags win over the environment"));
}

// TLS on one side only: the error says so, not only that the server could
// not be reached.
TEST_F(TlsTest, CliHintsAtTlsWhenOnlyOneSideUsesIt) {
  auto tls_server = testing::ServerProcess::Start(
      dir_.path() + "/db", {"--tls-cert", certs_->server_cert, "--tls-key", certs_->server_key});
  ASSERT_TRUE(tls_server.ok()) << tls_server.status();
  auto plain_server = testing::ServerProcess::Start(dir_.path() + "/db2");
  ASSERT_TRUE(plain_server.ok()) << plain_server.status();
  const std::string cli = testing::CliBinary();

  auto plaintext_client =
      testing::RunCommand({cli, "--server", (*tls_server)->address(), "--timeout", "2", "ls"});
  EXPECT_EQ(plaintext_client.exit_code, 4);
  EXPECT_THAT(plaintext_client.err, HasSubstr("ckpt: UNAVAILABLE: cannot reach ckpt server at " +
                                              (*tls_server)->address()));
  EXPECT_THAT(plaintext_client.err,
              HasSubstr("(the server there answers with TLS, not plaintext gRPC: pass --tls "
                        "(CKPT_TLS=1) and --ca-cert CA.pem"));

  auto tls_client = testing::RunCommand({cli, "--server", (*plain_server)->address(), "--ca-cert",
                                         certs_->ca, "--timeout", "2", "ls"});
  EXPECT_EQ(tls_client.exit_code, 4);
  EXPECT_THAT(tls_client.err,
              HasSubstr("(the server there speaks plaintext gRPC, without TLS: drop --tls"));
  // The message in words, without gRPC's own log lines before it.
  for (const auto* run : {&plaintext_client, &tls_client}) {
    EXPECT_THAT(run->err, Not(HasSubstr("Handshake failed"))) << run->err;
    EXPECT_EQ(run->err.rfind("ckpt: UNAVAILABLE: ", 0), 0u) << run->err;
  }
  // The server logs the failed handshake as one of its logfmt lines, not in
  // gRPC's own format ("E1202 11:40:55.123456 ... ssl_transport_security.cc").
  std::string log;
  for (int i = 0; i < 50; ++i) {
    log = (*tls_server)->Log();
    if (log.find("msg=grpc") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(std::regex_search(
      log,
      std::regex("\ntime=20[0-9-]+T[0-9:.]+Z level=error msg=grpc "
                 "source=ssl_transport_security\.cc:[0-9]+ detail=\"Handshake failed[^\n]*\"\n")))
      << log;
  EXPECT_FALSE(std::regex_search(log, std::regex("(^|\n)[EIWD][0-9]{4} "))) << log;

  // Nothing listening: said as such.
  const std::string gone = (*plain_server)->address();
  (*plain_server)->Kill();
  auto nothing = testing::RunCommand({cli, "--server", gone, "--timeout", "2", "ls"});
  EXPECT_EQ(nothing.exit_code, 4);
  EXPECT_THAT(nothing.err, HasSubstr("(nothing accepts connections there: is ckpt-server "
                                     "running? set the address with --server HOST:PORT or the "
                                     "CKPT_SERVER environment variable)"));
}

TEST(ServerProcessAuthTest, SighupReloadsTheTokensFile) {
  testing::TempDir dir;
  const std::string tokens = dir.path() + "/tokens";
  WriteFile(tokens, absl::StrCat("reader ", kReader, " read *\n"));
  auto server = testing::ServerProcess::Start(dir.path() + "/db", {"--tokens-file", tokens});
  ASSERT_TRUE(server.ok()) << server.status();
  auto ls = [&](const char* token) {
    return testing::RunCommand(
        {testing::CliBinary(), "--server", (*server)->address(), "--token", token, "ls"});
  };
  EXPECT_EQ(ls(kReader).exit_code, 0);
  EXPECT_EQ(ls(kWriter).exit_code, 7);

  auto reload = [&](int n) {
    ASSERT_EQ(kill((*server)->pid(), SIGHUP), 0);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    const std::string marker = "ckpt-server: SIGHUP: ";
    size_t count = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string log = (*server)->Log();
      count = 0;
      for (size_t at = log.find(marker); at != std::string::npos; at = log.find(marker, at + 1)) {
        ++count;
      }
      if (count >= static_cast<size_t>(n)) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << "no SIGHUP line " << n << " in:\n" << (*server)->Log();
  };
  WriteFile(tokens, absl::StrCat("writer ", kWriter, " write *\n"));
  reload(1);
  EXPECT_THAT((*server)->Log(), HasSubstr("ckpt-server: SIGHUP: tokens file reloaded"));
  EXPECT_EQ(ls(kReader).exit_code, 7);
  EXPECT_EQ(ls(kWriter).exit_code, 0);
  // A broken file keeps the tokens in use.
  WriteFile(tokens, "garbage\n");
  reload(2);
  EXPECT_THAT((*server)->Log(), HasSubstr("tokens file not reloaded (the old tokens stay)"));
  EXPECT_EQ(ls(kWriter).exit_code, 0);
}

TEST(ServerProcessAuthTest, DevelopmentModeSaysSoLoudly) {
  testing::TempDir dir;
  auto server = testing::ServerProcess::Start(dir.path() + "/db");
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_THAT((*server)->Log(), HasSubstr("WARNING: DEVELOPMENT MODE: no --tokens-file"));
  // Anyone may do anything, with or without a token.
  auto ls = testing::RunCommand(
      {testing::CliBinary(), "--server", (*server)->address(), "--token", "whatever", "ls"});
  EXPECT_EQ(ls.exit_code, 0) << ls.err;
}

}  // namespace
}  // namespace ckpt
