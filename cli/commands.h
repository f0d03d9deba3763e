#ifndef CKPT_CLI_COMMANDS_H_
#define CKPT_CLI_COMMANDS_H_

// The subcommands of `ckpt`. Each one is registered on the CLI11 app by an
// Add*Command function that binds its flags to an argument struct and puts
// an Action in the CommandTable; main() parses, runs the chosen Action with
// a Context, and turns its status into an exit code (ExitCodeFor).
//
// Adding a subcommand (e.g. `import`, `export`): write
//   void AddImportCommand(CLI::App& app, CommandTable& table);
// in its own cli/*.cc, declare it below and call it from AddCommands. Print
// results to ctx.out(), progress to ctx.err(), return errors as
// absl::Status (never exit or throw), and call ctx.Client() only when the
// server is needed: it connects on first use.

#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/raw_client.h"
#include "common/names.h"

namespace CLI {
class App;
}  // namespace CLI

namespace ckpt::cli {

/// Exit codes of `ckpt` (listed in the --help footer).
inline constexpr int kExitOk = 0;
/// Any error not listed below (INTERNAL, DATA_LOSS, RESOURCE_EXHAUSTED, ...).
inline constexpr int kExitError = 1;
/// Bad command line, or INVALID_ARGUMENT (bad name, version, tag).
inline constexpr int kExitUsage = 2;
/// NOT_FOUND: no such checkpoint, version or tag.
inline constexpr int kExitNotFound = 3;
/// UNAVAILABLE: cannot reach the server, or it is not serving.
inline constexpr int kExitUnavailable = 4;
/// DEADLINE_EXCEEDED: an RPC took longer than --timeout.
inline constexpr int kExitDeadline = 5;
/// FAILED_PRECONDITION or ALREADY_EXISTS: refused, e.g. deleting a tagged
/// version without --force.
inline constexpr int kExitRefused = 6;
/// UNAUTHENTICATED or PERMISSION_DENIED.
inline constexpr int kExitDenied = 7;

/// The exit code for `status` (kExitOk for OK).
int ExitCodeFor(const absl::Status& status);

/// Options that apply to every subcommand.
struct GlobalOptions {
  /// Server address HOST:PORT. Default: $CKPT_SERVER, else localhost:50051.
  std::string server = "localhost:50051";
  /// Connect timeout and deadline of each RPC, in seconds. Default: 10.
  double timeout_seconds = 10;
  /// Bearer token for servers with access control (--token). The token is
  /// the first given of --token, --token-file, $CKPT_TOKEN, $CKPT_TOKEN_FILE:
  /// main() fills these two from the environment only when neither flag was
  /// given. Default: none.
  std::string token;
  /// File whose content (surrounding whitespace removed) is the token; used
  /// when `token` is empty (--token-file). Default: none.
  std::string token_file;
  /// Connect with TLS. Default: $CKPT_TLS, else off; on when any of the
  /// files below is given.
  bool tls = false;
  /// PEM CA certificates that verify the server (default: system roots),
  /// client certificate and key (mTLS), and the name the server's
  /// certificate must carry if not the host of `server`. Default: $CKPT_CA_CERT,
  /// $CKPT_CERT, $CKPT_KEY, $CKPT_TLS_SERVER_NAME, else none.
  std::string ca_cert;
  std::string cert;
  std::string key;
  std::string tls_server_name;
};

/// What a subcommand runs with: the global options, where to print, and the
/// connection to the server (made on first use). Not thread-safe.
class Context {
 public:
  Context(GlobalOptions options, std::ostream& out, std::ostream& err);

  /// The connected client. UNAVAILABLE naming the address and how to change
  /// it (--server, CKPT_SERVER) if the server does not answer within
  /// --timeout; INVALID_ARGUMENT for an empty address.
  absl::StatusOr<client::RawClient*> Client();

  const GlobalOptions& options() const { return options_; }
  /// Command results.
  std::ostream& out() { return out_; }
  /// Progress and warnings.
  std::ostream& err() { return err_; }

 private:
  GlobalOptions options_;
  std::ostream& out_;
  std::ostream& err_;
  std::unique_ptr<client::RawClient> client_;
};

/// What a subcommand does once its arguments are parsed.
using Action = std::function<absl::Status(Context&)>;

/// Maps each registered subcommand to its Action.
class CommandTable {
 public:
  void Add(const CLI::App* subcommand, Action action);
  /// The Action of the subcommand `app` parsed; nullptr if none was given.
  const Action* Selected(const CLI::App& app) const;

 private:
  std::vector<std::pair<const CLI::App*, Action>> actions_;
};

void AddLsCommand(CLI::App& app, CommandTable& table);
void AddVersionsCommand(CLI::App& app, CommandTable& table);
void AddShowCommand(CLI::App& app, CommandTable& table);
void AddDiffCommand(CLI::App& app, CommandTable& table);
void AddLogCommand(CLI::App& app, CommandTable& table);
void AddRmCommand(CLI::App& app, CommandTable& table);
void AddTagCommands(CLI::App& app, CommandTable& table);        // tag, untag
void AddRetentionCommands(CLI::App& app, CommandTable& table);  // retention, prune
void AddGcCommand(CLI::App& app, CommandTable& table);
void AddBackupCommand(CLI::App& app, CommandTable& table);
void AddUsageCommand(CLI::App& app, CommandTable& table);
void AddHealthCommand(CLI::App& app, CommandTable& table);
/// put NAME FILE, get REF FILE (cli/files.cc).
void AddFileCommands(CLI::App& app, CommandTable& table);
/// import FILE NAME, export REF FILE: PyTorch .pt and .safetensors files
/// (cli/interop.cc). Import prints "imported FILE as NAME@V (FORMAT, N
/// tensors, SIZE, sent SIZE)", export "exported NAME@V to FILE (FORMAT, N
/// tensors, SIZE)"; a progress bar goes to stderr.
void AddInteropCommands(CLI::App& app, CommandTable& table);
void AddStatsCommand(CLI::App& app, CommandTable& table);

/// Adds every subcommand above to `app`, in the order --help lists them.
void AddCommands(CLI::App& app, CommandTable& table);

/// Adds `--metadata KEY=VALUE` items (split at the first '=') to
/// `metadata`, replacing what a key held. InvalidArgument for an item
/// without '=' or with an empty key, or a key given twice.
absl::Status AddMetadata(const std::vector<std::string>& items,
                         std::map<std::string, std::string>* metadata);

/// After a save (put, import): "retention deleted NAME versions: 1, 2" when
/// the name's retention policy deleted versions; nothing otherwise.
void PrintPruned(std::ostream& out, const std::string& name, const client::SaveResult& saved);

/// The version number `ref` names: ref.version if set, else the version
/// its tag (empty: "latest") points at, looked up with ListVersions.
/// NOT_FOUND if the checkpoint or the tag does not exist.
absl::StatusOr<uint64_t> ResolveVersion(client::RawClient& client, const VersionRef& ref);

}  // namespace ckpt::cli

#endif  // CKPT_CLI_COMMANDS_H_
