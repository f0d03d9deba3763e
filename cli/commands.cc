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

// ------------------------------------------------------------------ ls

struct LsArgs {
  std::string prefix;
  bool json = false;
};

absl::Status RunLs(Context& ctx, const LsArgs& args) {
  if (!args.prefix.empty()) CKPT_RETURN_IF_ERROR(ValidatePrefix(args.prefix));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(auto list, client->ListCheckpoints(args.prefix));
  if (args.json) {
    Json out = Json::array();
    for (const auto& s : list) out.push_back(SummaryToJson(s));
    PrintJson(ctx.out(), out);
    return absl::OkStatus();
  }
  if (list.empty()) {
    // stdout stays empty for scripts; a person sees why.
    ctx.err() << (args.prefix.empty() ? std::string("no checkpoints on this server")
                                      : absl::StrCat("no checkpoints under '", args.prefix, "'"))
              << "\n";
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : list) {
    rows.push_back({s.name, absl::StrCat(s.latest_version), absl::StrCat(s.num_versions),
                    FormatTime(s.latest_create_time_ms)});
  }
  PrintTable(ctx.out(), {"NAME", "LATEST", "VERSIONS", "UPDATED"}, rows);
  return absl::OkStatus();
}

// ------------------------------------------------------------ versions

struct VersionsArgs {
  std::string name;
  bool json = false;
};

absl::Status RunVersions(Context& ctx, const VersionsArgs& args) {
  CKPT_RETURN_IF_ERROR(ValidateName(args.name));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(auto versions, client->ListVersions(args.name));
  if (args.json) {
    Json out = Json::array();
    for (const auto& v : versions) out.push_back(VersionToJson(v));
    PrintJson(ctx.out(), out);
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& v : versions) {
    rows.push_back({absl::StrCat(v.version), FormatTime(v.create_time_ms), absl::StrCat(v.step),
                    absl::StrCat(v.epoch), absl::StrCat(v.num_tensors), HumanBytes(v.data_bytes),
                    HumanBytes(v.new_bytes), v.tags.empty() ? "-" : absl::StrJoin(v.tags, ",")});
  }
  PrintTable(ctx.out(), {"VERSION", "CREATED", "STEP", "EPOCH", "TENSORS", "SIZE", "NEW", "TAGS"},
             rows);
  return absl::OkStatus();
}

// ---------------------------------------------------------------- show

struct ShowArgs {
  std::string ref;
  bool json = false;
};

absl::Status RunShow(Context& ctx, const ShowArgs& args) {
  CKPT_ASSIGN_OR_RETURN(VersionRef ref, ParseVersionRef(args.ref));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(auto manifest, client->GetManifest(ref.name, ref.version, ref.tag));
  if (args.json) {
    Json out = VersionToJson(manifest.version);
    CKPT_ASSIGN_OR_RETURN(out["tree"], TreeToJson(manifest.tree));
    PrintJson(ctx.out(), out);
    return absl::OkStatus();
  }
  PrintVersionHeader(ctx.out(), manifest.version);
  ctx.out() << '\n';
  PrintTree(ctx.out(), manifest.tree);
  return absl::OkStatus();
}

// ------------------------------------------------------------------ rm

struct RmArgs {
  std::string ref;
  bool force = false;
  bool all = false;
};

// rm NAME --all: every version, oldest first. Checks the tags first, so that
// without --force a tagged version refuses the whole command before anything
// is deleted.
absl::Status RunRmAll(Context& ctx, const RmArgs& args) {
  if (args.ref.find('@') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rm --all takes a NAME without @VERSION or @TAG, got '", Printable(args.ref), "'"));
  }
  CKPT_RETURN_IF_ERROR(ValidateName(args.ref));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(auto versions, client->ListVersions(args.ref));
  if (!args.force) {
    std::vector<std::string> tagged;
    for (const VersionInfo& v : versions) {
      std::vector<std::string> user_tags;
      for (const std::string& t : v.tags) {
        if (t != kLatestTag) user_tags.push_back(t);
      }
      if (!user_tags.empty()) {
        tagged.push_back(absl::StrCat(v.version, " (", absl::StrJoin(user_tags, ","), ")"));
      }
    }
    if (!tagged.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "not deleting ", args.ref, ": tagged versions ", absl::StrJoin(tagged, ", "),
          "; nothing was deleted (--force deletes them and removes their tags)"));
    }
  }
  std::vector<uint64_t> deleted;
  uint64_t chunks = 0;
  for (const VersionInfo& v : versions) {
    auto released = client->DeleteVersion(args.ref, v.version, args.force);
    if (!released.ok()) {
      return Annotate(released.status(),
                      absl::StrCat("cannot delete ", args.ref, "@", v.version, " (deleted before: ",
                                   deleted.empty() ? "none" : absl::StrJoin(deleted, ", "), ")"));
    }
    deleted.push_back(v.version);
    chunks += *released;
  }
  ctx.out() << "deleted " << args.ref << " versions: " << absl::StrJoin(deleted, ", ") << " ("
            << chunks << " chunks released)\n";
  return absl::OkStatus();
}

absl::Status RunRm(Context& ctx, const RmArgs& args) {
  if (args.all) return RunRmAll(ctx, args);
  // Deleting is not undoable: never pick a version the user did not name.
  if (args.ref.find('@') == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rm needs NAME@VERSION or NAME@TAG (or NAME --all for every version), got '",
        Printable(args.ref), "'"));
  }
  CKPT_ASSIGN_OR_RETURN(VersionRef ref, ParseVersionRef(args.ref));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(uint64_t version, ResolveVersion(*client, ref));
  auto released = client->DeleteVersion(ref.name, version, args.force);
  if (!released.ok()) {
    absl::Status status =
        Annotate(released.status(), absl::StrCat("cannot delete ", ref.name, "@", version));
    if (status.code() == absl::StatusCode::kFailedPrecondition && !args.force) {
      return absl::FailedPreconditionError(
          absl::StrCat(status.message(), " (--force deletes it and removes its tags)"));
    }
    return status;
  }
  ctx.out() << "deleted " << ref.name << "@" << version << " (" << *released
            << " chunks released)\n";
  return absl::OkStatus();
}

// ----------------------------------------------------------- tag, untag

struct TagArgs {
  std::string ref;
  std::string tag;
};

absl::Status RunTag(Context& ctx, const TagArgs& args) {
  CKPT_ASSIGN_OR_RETURN(VersionRef ref, ParseVersionRef(args.ref));
  CKPT_RETURN_IF_ERROR(ValidateUserTag(args.tag));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  // A tag is pinned to a number: NAME or NAME@TAG is resolved now, so the
  // new tag does not follow the other one later.
  CKPT_ASSIGN_OR_RETURN(uint64_t version, ResolveVersion(*client, ref));
  CKPT_RETURN_IF_ERROR(client->SetTag(ref.name, args.tag, version));
  ctx.out() << "tagged " << ref.name << "@" << version << " as " << args.tag << "\n";
  return absl::OkStatus();
}

struct UntagArgs {
  std::string name;
  std::string tag;
};

absl::Status RunUntag(Context& ctx, const UntagArgs& args) {
  CKPT_RETURN_IF_ERROR(ValidateName(args.name));
  CKPT_RETURN_IF_ERROR(ValidateUserTag(args.tag));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_RETURN_IF_ERROR(client->DeleteTag(args.name, args.tag));
  ctx.out() << "removed tag " << args.tag << " from " << args.name << "\n";
  return absl::OkStatus();
}

// ------------------------------------------------------------------ gc

struct JsonArgs {
  bool json = false;
};

absl::Status RunGc(Context& ctx, const JsonArgs& args) {
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(GcResult gc, client->GarbageCollect());
  if (args.json) {
    PrintJson(ctx.out(), GcResultToJson(gc));
    return absl::OkStatus();
  }
  PrintFields(ctx.out(), {
                             {"chunks removed", absl::StrCat(gc.chunks_removed)},
                             {"bytes removed", HumanAndExactBytes(gc.bytes_removed)},
                             {"orphan uploads removed", absl::StrCat(gc.orphan_uploads_removed)},
                         });
  return absl::OkStatus();
}

// ---------------------------------------------------------------- backup

struct BackupArgs {
  std::string name;
  bool json = false;
};

absl::Status RunBackup(Context& ctx, const BackupArgs& args) {
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(BackupInfo backup, client->Backup(args.name));
  if (args.json) {
    PrintJson(ctx.out(), BackupInfoToJson(backup));
    return absl::OkStatus();
  }
  PrintFields(ctx.out(), {
                             {"backup", backup.name},
                             {"path (on the server)", backup.path},
                             {"versions", absl::StrCat(backup.versions)},
                             {"files", absl::StrCat(backup.files)},
                             {"bytes", HumanAndExactBytes(backup.bytes)},
                         });
  return absl::OkStatus();
}

// ---------------------------------------------------- retention, prune

struct RetentionArgs {
  std::string name;
  RetentionPolicy policy;
  bool clear = false;
};

std::string VersionList(const std::vector<uint64_t>& versions) {
  return versions.empty() ? "none" : absl::StrJoin(versions, ", ");
}

absl::Status RunRetention(Context& ctx, const RetentionArgs& args, bool setting) {
  CKPT_RETURN_IF_ERROR(ValidateName(args.name));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  if (!setting) {
    CKPT_ASSIGN_OR_RETURN(RetentionPolicy policy, client->GetRetention(args.name));
    ctx.out() << "retention of " << args.name << ": " << DescribeRetentionPolicy(policy) << "\n";
    return absl::OkStatus();
  }
  if (args.clear && !(args.policy == RetentionPolicy{})) {
    return absl::InvalidArgumentError("--clear takes no other retention option");
  }
  // Checked here too, so a bad command line fails before connecting.
  CKPT_RETURN_IF_ERROR(ValidateRetentionPolicy(args.policy));
  if (!args.clear && !args.policy.enabled()) {
    return absl::InvalidArgumentError(
        "give --keep-last or --keep-best (or --clear to remove the policy)");
  }
  CKPT_ASSIGN_OR_RETURN(std::vector<uint64_t> would, client->SetRetention(args.name, args.policy));
  ctx.out() << "retention of " << args.name << ": " << DescribeRetentionPolicy(args.policy) << "\n";
  if (!args.clear) {
    ctx.out() << "applied after each save; versions it would delete now: " << VersionList(would)
              << "\n";
  }
  return absl::OkStatus();
}

struct PruneArgs {
  std::string name;
  bool dry_run = false;
};

absl::Status RunPrune(Context& ctx, const PruneArgs& args) {
  CKPT_RETURN_IF_ERROR(ValidateName(args.name));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(std::vector<uint64_t> versions, client->Prune(args.name, args.dry_run));
  ctx.out() << (args.dry_run ? "would delete " : "deleted ") << args.name
            << " versions: " << VersionList(versions) << "\n";
  return absl::OkStatus();
}

// --------------------------------------------------------------- usage

struct UsageArgs {
  std::string prefix;
  bool json = false;
};

std::string Percent(uint64_t used, uint64_t quota) {
  return quota == 0 ? "-" : absl::StrFormat("%.1f%%", 100.0 * used / quota);
}

absl::Status RunUsage(Context& ctx, const UsageArgs& args) {
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  std::vector<std::string> namespaces;
  if (!args.prefix.empty()) {
    const std::string ns = args.prefix.substr(0, args.prefix.find('/'));
    CKPT_RETURN_IF_ERROR(ValidateName(ns));
    namespaces.push_back(ns);
  } else {
    // Every namespace this token can list.
    CKPT_ASSIGN_OR_RETURN(auto list, client->ListCheckpoints(""));
    for (const auto& s : list) {
      const std::string ns(NamespaceOf(s.name));
      if (namespaces.empty() || namespaces.back() != ns) namespaces.push_back(ns);
    }
    std::sort(namespaces.begin(), namespaces.end());
    namespaces.erase(std::unique(namespaces.begin(), namespaces.end()), namespaces.end());
  }
  std::vector<client::NamespaceUsage> usages;
  for (const std::string& ns : namespaces) {
    CKPT_ASSIGN_OR_RETURN(client::NamespaceUsage usage, client->GetUsage(ns));
    usages.push_back(usage);
  }
  if (args.json) {
    Json out = Json::array();
    for (const auto& u : usages) {
      out.push_back(
          {{"namespace", u.ns}, {"used_bytes", u.used_bytes}, {"quota_bytes", u.quota_bytes}});
    }
    PrintJson(ctx.out(), out);
    return absl::OkStatus();
  }
  if (usages.empty()) {
    ctx.err() << "no checkpoints on this server\n";
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& u : usages) {
    rows.push_back({u.ns, HumanBytes(u.used_bytes),
                    u.quota_bytes == 0 ? "none" : HumanBytes(u.quota_bytes),
                    Percent(u.used_bytes, u.quota_bytes)});
  }
  PrintTable(ctx.out(), {"NAMESPACE", "USED", "QUOTA", "USE%"}, rows);
  return absl::OkStatus();
}

// -------------------------------------------------------------- health

absl::Status RunHealth(Context& ctx) {
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_RETURN_IF_ERROR(client->Health());
  ctx.out() << "SERVING\n";
  return absl::OkStatus();
}

// --------------------------------------------------------------- stats

absl::Status RunStats(Context& ctx, const JsonArgs& args) {
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(client::ServerInfo info, client->GetServerInfo());
  if (args.json) {
    PrintJson(ctx.out(), ServerInfoToJson(info));
    return absl::OkStatus();
  }
  const StoreStats& s = info.stats;
  PrintFields(ctx.out(), {
                             {"server version", info.server_version},
                             {"chunk size", HumanAndExactBytes(info.chunk_size)},
                             {"checkpoints", absl::StrCat(s.checkpoints)},
                             {"versions", absl::StrCat(s.versions)},
                             {"chunks", absl::StrCat(s.chunks)},
                             {"stored bytes", HumanAndExactBytes(s.stored_bytes)},
                             {"logical bytes", HumanAndExactBytes(s.logical_bytes)},
                             {"dedup ratio", absl::StrFormat("%.2f", info.dedup_ratio)},
                             {"disk bytes", HumanAndExactBytes(s.disk_bytes)},
                             {"active uploads", absl::StrCat(s.active_uploads)},
                             {"garbage bytes", HumanAndExactBytes(s.garbage_bytes)},
                         });
  return absl::OkStatus();
}

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
      return absl::UnavailableError(absl::StrCat(connected.status().message(),
                                                 ConnectHint(options_.server, options.tls)));
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
      return absl::InvalidArgumentError(absl::StrCat(
          "--metadata takes KEY=VALUE (e.g. loss=0.25), got '", Printable(item), "'"));
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

void AddLsCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<LsArgs>();
  CLI::App* sub = app.add_subcommand(
      "ls", "List checkpoints: name, latest version, number of versions, time of the latest");
  sub->add_option("prefix", args->prefix, "Only names starting with PREFIX (e.g. team/)");
  sub->add_flag("--json", args->json, "Print a JSON array");
  table.Add(sub, [args](Context& ctx) { return RunLs(ctx, *args); });
}

void AddVersionsCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<VersionsArgs>();
  CLI::App* sub = app.add_subcommand("versions", "List the versions of a checkpoint, oldest first");
  sub->add_option("name", args->name, "Checkpoint name")->required();
  sub->add_flag("--json", args->json, "Print a JSON array");
  table.Add(sub, [args](Context& ctx) { return RunVersions(ctx, *args); });
}

void AddShowCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<ShowArgs>();
  CLI::App* sub = app.add_subcommand(
      "show", "Show a version's record and value tree (keys, dtypes, shapes, scalars)");
  sub->add_option("ref", args->ref, "NAME, NAME@VERSION or NAME@TAG (default: latest)")->required();
  sub->add_flag("--json", args->json, "Print a JSON object with the tree nested under \"tree\"");
  table.Add(sub, [args](Context& ctx) { return RunShow(ctx, *args); });
}

void AddRmCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<RmArgs>();
  CLI::App* sub = app.add_subcommand(
      "rm", "Delete one version, or every version with --all (chunks are freed by gc)");
  sub->add_option("ref", args->ref,
                  "NAME@VERSION, NAME@TAG for the version TAG names, or NAME with --all")
      ->required();
  sub->add_flag("--all", args->all, "Delete every version of NAME");
  sub->add_flag("--force", args->force, "Delete even if user tags point at it (removes them)");
  table.Add(sub, [args](Context& ctx) { return RunRm(ctx, *args); });
}

void AddTagCommands(CLI::App& app, CommandTable& table) {
  auto tag_args = std::make_shared<TagArgs>();
  CLI::App* tag = app.add_subcommand("tag", "Point TAG at a version (moves it if it exists)");
  tag->add_option("ref", tag_args->ref, "NAME@VERSION (NAME or NAME@OTHER_TAG: resolved now)")
      ->required();
  tag->add_option("tag", tag_args->tag, "Tag to set: [A-Za-z0-9._-], not all digits")->required();
  table.Add(tag, [tag_args](Context& ctx) { return RunTag(ctx, *tag_args); });

  auto untag_args = std::make_shared<UntagArgs>();
  CLI::App* untag = app.add_subcommand("untag", "Remove a tag from a checkpoint");
  untag->add_option("name", untag_args->name, "Checkpoint name")->required();
  untag->add_option("tag", untag_args->tag, "Tag to remove")->required();
  table.Add(untag, [untag_args](Context& ctx) { return RunUntag(ctx, *untag_args); });
}

void AddRetentionCommands(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<RetentionArgs>();
  CLI::App* sub = app.add_subcommand(
      "retention",
      "Show or set which versions of a name to keep (applied after each save): a version is "
      "kept if any rule keeps it; tagged versions and the newest are always kept");
  sub->add_option("name", args->name, "Checkpoint name")->required();
  sub->add_option("--keep-last", args->policy.keep_last, "Keep the newest N versions");
  sub->add_option("--keep-every-steps", args->policy.keep_every_steps,
                  "Also keep versions whose step is a multiple of K");
  sub->add_option("--keep-best", args->policy.keep_best, "Keep the N best versions by --metric");
  sub->add_option("--metric", args->policy.metric,
                  "Metadata key holding a number, e.g. loss (lower is better)");
  sub->add_flag("--higher-is-better", args->policy.higher_is_better,
                "For --metric: higher values are better (e.g. accuracy)");
  sub->add_flag("--clear", args->clear, "Remove the policy (keep every version)");
  table.Add(sub, [args, sub](Context& ctx) {
    const bool setting = sub->count("--keep-last") + sub->count("--keep-every-steps") +
                             sub->count("--keep-best") + sub->count("--metric") +
                             sub->count("--higher-is-better") + sub->count("--clear") >
                         0;
    return RunRetention(ctx, *args, setting);
  });

  auto prune_args = std::make_shared<PruneArgs>();
  CLI::App* prune =
      app.add_subcommand("prune", "Apply a name's retention policy now (chunks are freed by gc)");
  prune->add_option("name", prune_args->name, "Checkpoint name")->required();
  prune->add_flag("--dry-run", prune_args->dry_run, "Only list what would be deleted");
  table.Add(prune, [prune_args](Context& ctx) { return RunPrune(ctx, *prune_args); });
}

void AddGcCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<JsonArgs>();
  CLI::App* sub =
      app.add_subcommand("gc", "Remove chunks no version references and leftovers of dead uploads");
  sub->add_flag("--json", args->json, "Print a JSON object");
  table.Add(sub, [args](Context& ctx) { return RunGc(ctx, *args); });
}

void AddBackupCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<BackupArgs>();
  CLI::App* sub = app.add_subcommand(
      "backup",
      "Have the server write a consistent copy of its whole store into its --backup-dir while "
      "it serves (admin right on \"*\")");
  sub->add_option("name", args->name,
                  "Directory name of the backup in the server's --backup-dir (default: "
                  "ckpt-backup-<UTC time>)");
  sub->add_flag("--json", args->json, "Print a JSON object");
  table.Add(sub, [args](Context& ctx) { return RunBackup(ctx, *args); });
}

void AddUsageCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<UsageArgs>();
  CLI::App* sub = app.add_subcommand(
      "usage",
      "Bytes each namespace holds (distinct chunks its versions reference) against its quota");
  sub->add_option("prefix", args->prefix,
                  "A namespace, or a name or prefix in it (team, team/run-1/model); default: "
                  "every namespace with checkpoints");
  sub->add_flag("--json", args->json, "Print a JSON array");
  table.Add(sub, [args](Context& ctx) { return RunUsage(ctx, *args); });
}

void AddHealthCommand(CLI::App& app, CommandTable& table) {
  CLI::App* sub = app.add_subcommand("health", "Print SERVING and exit 0 if the server serves");
  table.Add(sub, RunHealth);
}

void AddStatsCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<JsonArgs>();
  CLI::App* sub = app.add_subcommand("stats", "Server version, chunk size and storage totals");
  sub->add_flag("--json", args->json, "Print a JSON object");
  table.Add(sub, [args](Context& ctx) { return RunStats(ctx, *args); });
}

void AddCommands(CLI::App& app, CommandTable& table) {
  AddLsCommand(app, table);
  AddVersionsCommand(app, table);
  AddShowCommand(app, table);
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
