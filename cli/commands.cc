#include "cli/commands.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "cli/format.h"
#include "common/retention.h"
#include "common/status_macros.h"

namespace ckpt::cli {
namespace {

using client::RawClient;

// What listens at a HOST:PORT the client could not connect to.
enum class Listener { kUnknown, kNothing, kPlaintextGrpc, kTls };

// Opens a TCP connection and sends HTTP/2's client preface and an empty
// SETTINGS frame: a plaintext gRPC server answers with its own SETTINGS
// frame, a TLS server with a TLS alert record (or by closing). Bounded by
// `timeout`; kUnknown when the answer says nothing either way.
Listener ProbeListener(const std::string& target, std::chrono::milliseconds timeout) {
  std::string host, port;
  if (!target.empty() && target[0] == '[') {  // [::1]:50051
    const size_t close = target.find("]:");
    if (close == std::string::npos) return Listener::kUnknown;
    host = target.substr(1, close - 1);
    port = target.substr(close + 2);
  } else {
    const size_t colon = target.rfind(':');
    if (colon == std::string::npos || target.find("://") != std::string::npos) {
      return Listener::kUnknown;
    }
    host = target.substr(0, colon);
    port = target.substr(colon + 1);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0) return Listener::kUnknown;
  Listener result = Listener::kNothing;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    auto wait = [fd, timeout](short events) {
      pollfd p{fd, events, 0};
      return poll(&p, 1, static_cast<int>(timeout.count())) == 1;
    };
    int error = 0;
    socklen_t len = sizeof(error);
    if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 &&
        (errno != EINPROGRESS || !wait(POLLOUT) ||
         getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0)) {
      close(fd);
      continue;
    }
    // Something accepts connections there; its first bytes tell what.
    static constexpr char kPreface[] =
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    result = Listener::kUnknown;
    unsigned char answer[9] = {};
    if (send(fd, kPreface, sizeof(kPreface) - 1, MSG_NOSIGNAL) > 0 && wait(POLLIN)) {
      const ssize_t n = recv(fd, answer, sizeof(answer), 0);
      if (n >= 4 && answer[3] == 0x04) {
        result = Listener::kPlaintextGrpc;  // an HTTP/2 SETTINGS frame
      } else if (n >= 1 && (answer[0] == 0x15 || answer[0] == 0x16)) {
        result = Listener::kTls;  // a TLS alert or handshake record
      } else if (n == 0) {
        result = Listener::kTls;  // closed on an HTTP/2 preface: not plaintext gRPC
      }
    }
    close(fd);
    break;
  }
  freeaddrinfo(found);
  return result;
}

// A hint for a connection that failed: TLS on one side only is the usual
// cause when something does listen there.
std::string ConnectHint(const std::string& target, bool tls) {
  switch (ProbeListener(target, std::chrono::milliseconds(2000))) {
    case Listener::kPlaintextGrpc:
      if (!tls) break;
      return " (the server there speaks plaintext gRPC, without TLS: drop --tls, --ca-cert, "
             "--cert and CKPT_TLS/CKPT_CA_CERT/CKPT_CERT, or start the server with --tls-cert "
             "and --tls-key)";
    case Listener::kTls:
      return tls ? " (the server there speaks TLS: check --ca-cert, --tls-server-name and, if "
                   "it requires client certificates, --cert and --key)"
                 : " (the server there answers with TLS, not plaintext gRPC: pass --tls "
                   "(CKPT_TLS=1) and --ca-cert CA.pem if its certificate is not signed by the "
                   "system's roots)";
    case Listener::kNothing:
      return " (nothing accepts connections there: is ckpt-server running? set the address "
             "with --server HOST:PORT or the CKPT_SERVER environment variable)";
    case Listener::kUnknown:
      break;
  }
  return " (is ckpt-server running there? set the address with --server HOST:PORT or the "
         "CKPT_SERVER environment variable)";
}

}  // namespace

int ExitCodeFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return kExitOk;
    case absl::StatusCode::kInvalidArgument:
      return kExitUsage;
    case absl::StatusCode::kNotFound:
      return kExitNotFound;
    case absl::StatusCode::kUnavailable:
      return kExitUnavailable;
    case absl::StatusCode::kDeadlineExceeded:
      return kExitDeadline;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAlreadyExists:
      return kExitRefused;
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
      return kExitDenied;
    default:
      return kExitError;
  }
}

Context::Context(GlobalOptions options, std::ostream& out, std::ostream& err)
    : options_(std::move(options)), out_(out), err_(err) {}

absl::StatusOr<RawClient*> Context::Client() {
  if (client_ != nullptr) return client_.get();
  if (options_.server.empty()) {
    return absl::InvalidArgumentError("empty server address: give --server HOST:PORT");
  }
  client::ClientOptions options;
  options.connect_timeout = absl::Seconds(options_.timeout_seconds);
  options.rpc_timeout = absl::Seconds(options_.timeout_seconds);
  options.token = options_.token;
  if (options.token.empty() && !options_.token_file.empty()) {
    std::ifstream in(options_.token_file, std::ios::binary);
    if (!in) {
      return absl::NotFoundError(
          absl::StrCat("cannot read token file '", options_.token_file, "' (--token-file)"));
    }
    std::stringstream text;
    text << in.rdbuf();
    options.token = std::string(absl::StripAsciiWhitespace(text.str()));
  }
  options.tls = options_.tls || !options_.ca_cert.empty() || !options_.cert.empty() ||
                !options_.tls_server_name.empty();
  options.tls_ca_file = options_.ca_cert;
  options.tls_cert_file = options_.cert;
  options.tls_key_file = options_.key;
  options.tls_server_name = options_.tls_server_name;
  auto connected = RawClient::Connect(options_.server, options);
  if (!connected.ok()) {
    if (connected.status().code() == absl::StatusCode::kUnavailable) {
      return absl::UnavailableError(
          absl::StrCat(connected.status().message(), ConnectHint(options_.server, options.tls)));
    }
    return connected.status();
  }
  client_ = *std::move(connected);
  return client_.get();
}

void CommandTable::Add(const CLI::App* subcommand, Action action) {
  actions_.emplace_back(subcommand, std::move(action));
}

const Action* CommandTable::Selected(const CLI::App& app) const {
  for (const CLI::App* chosen : app.get_subcommands()) {
    for (const auto& [subcommand, action] : actions_) {
      if (subcommand == chosen) return &action;
    }
  }
  return nullptr;
}

absl::Status AddMetadata(const std::vector<std::string>& items,
                         std::map<std::string, std::string>* metadata) {
  std::set<std::string> seen;
  for (const std::string& item : items) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metadata takes KEY=VALUE (e.g. loss=0.25), got '", Printable(item), "'"));
    }
    std::string key = item.substr(0, eq);
    if (!seen.insert(key).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metadata key '", Printable(key), "' given twice"));
    }
    (*metadata)[std::move(key)] = item.substr(eq + 1);
  }
  return absl::OkStatus();
}

void PrintPruned(std::ostream& out, const std::string& name, const client::SaveResult& saved) {
  if (saved.pruned_versions.empty()) return;
  out << "retention deleted " << name << " versions: " << absl::StrJoin(saved.pruned_versions, ", ")
      << "\n";
}

absl::StatusOr<uint64_t> ResolveVersion(RawClient& client, const VersionRef& ref) {
  if (ref.version != 0) return ref.version;
  const std::string tag = ref.tag.empty() ? std::string(kLatestTag) : ref.tag;
  CKPT_ASSIGN_OR_RETURN(auto versions, client.ListVersions(ref.name));
  for (const VersionInfo& v : versions) {
    if (std::find(v.tags.begin(), v.tags.end(), tag) != v.tags.end()) return v.version;
  }
  // Versions come oldest first; do not rely on the server listing "latest".
  if (tag == kLatestTag && !versions.empty()) return versions.back().version;
  return absl::NotFoundError(absl::StrCat("checkpoint ", ref.name, " has no tag '", tag, "'"));
}

void AddCommands(CLI::App& app, CommandTable& table) {
  AddLsCommand(app, table);
  AddVersionsCommand(app, table);
  AddShowCommand(app, table);
  AddDiffCommand(app, table);
  AddLogCommand(app, table);
  AddRmCommand(app, table);
  AddTagCommands(app, table);
  AddRetentionCommands(app, table);
  AddGcCommand(app, table);
  AddBackupCommand(app, table);
  AddUsageCommand(app, table);
  AddHealthCommand(app, table);
  AddStatsCommand(app, table);
  AddFileCommands(app, table);
  AddInteropCommands(app, table);
}

}  // namespace ckpt::cli
