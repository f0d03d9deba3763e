// ckpt: the command-line tool of the ckpt checkpoint store.
//
//   ckpt [--server HOST:PORT] [--timeout SECONDS] COMMAND [ARGS]
//
// --server defaults to $CKPT_SERVER, else localhost:50051. --timeout (default
// 10 s) bounds the connect and each RPC. Access control and TLS: the token
// is the first of --token, --token-file, $CKPT_TOKEN, $CKPT_TOKEN_FILE
// (flags win over the environment); --tls ($CKPT_TLS),
// --ca-cert, --cert, --key, --tls-server-name ($CKPT_CA_CERT, $CKPT_CERT,
// $CKPT_KEY, $CKPT_TLS_SERVER_NAME). Global options may also follow the
// command (`ckpt ls --server h:1`).
//
// OUTPUT FORMATS (stable; scripts and tests rely on them)
//
// General: results go to stdout, errors to stderr as one line
//   ckpt: <CODE_NAME>: <message>        e.g. "ckpt: NOT_FOUND: no checkpoint a/b"
// where CODE_NAME is the absl/gRPC status code name. Times are ISO-8601 UTC
// with second precision ("2024-05-01T12:34:56Z"). Human sizes use binary
// prefixes: "24 B" below 1 KiB, else one decimal ("1.0 KiB", "1.5 GiB").
// Tables have one header line, columns left-aligned and separated by at
// least two spaces, no trailing whitespace; an empty result prints nothing.
// "Fields" blocks are "label:" padded to a common column, then the value;
// a multi-line value continues at the same column. --json prints one JSON
// document indented by two spaces, keys in the order listed here; numbers
// are exact integers (versions, bytes, steps) unless stated.
//
// ls [PREFIX] [--json]
//   table NAME  LATEST  VERSIONS  UPDATED  (UPDATED: time of the latest version)
//   none: stdout stays empty and stderr says "no checkpoints on this server"
//   (or "no checkpoints under 'PREFIX'")
//   json: [{"name", "latest_version", "num_versions", "latest_created",
//           "latest_create_time_ms"}, ...]
//
// versions NAME [--json]
//   table VERSION  CREATED  STEP  EPOCH  TENSORS  SIZE  NEW  TAGS
//   SIZE = data bytes, NEW = bytes this version added (both human); TAGS
//   comma-separated without spaces ("best,latest"), "-" if none.
//   json: [version object, ...] oldest first, where a version object is
//     {"name", "version", "created", "create_time_ms", "step", "epoch",
//      "metadata": {key: value}, "tags": [...], "num_tensors", "num_nodes",
//      "data_bytes", "new_bytes", "world_size"}
//
// show NAME[@VERSION|@TAG] [--json]        (no suffix: latest)
//   fields: name, version, created, step, epoch, tags ("best, latest" or
//   "-"), metadata (one "key=value" per line, or "-"), tensors, nodes,
//   data size, new bytes ("1.5 GiB (1610612736 bytes)", or "24 bytes"),
//   parts; then an empty line and the tree, one line per node in pre-order,
//   indented two spaces per depth:
//     <indent><KEY>  <DESCRIPTION>     (the root has no KEY)
//   KEY: a dict key as is (an integer key as its number; a string key that
//   is empty, looks like an integer, starts with '"' or '[' or holds spaces
//   or control characters is double-quoted with C escapes); list and tuple
//   elements as "[i]".
//   DESCRIPTION:
//     containers  dict (3) | list (2) | tuple (2)      (number of children)
//     tensor      float32 [2, 3]  24 B  cpu  [requires_grad]   ("[]": 0-dim)
//     bytes       bytes 1.2 MiB
//     scalars     5 | 0.25 | 1.0 | 1e-05 | nan | inf | True | False | None |
//                 "text" (double quotes, C escapes)
//     floats print the shortest decimal that reads back exactly, with ".0"
//     added to integral values.
//   json: the version object plus "tree": a node, where a node is
//     {"type": "dict", "items": [{"key": "fc" | 0, "value": node}, ...]}
//     {"type": "list" | "tuple", "items": [node, ...]}
//     {"type": "none"}
//     {"type": "bool" | "int" | "string", "value": ...}
//     {"type": "float", "value": 0.25}  (non-finite: "nan", "inf", "-inf")
//     {"type": "tensor", "dtype", "shape": [...], "device",
//      "requires_grad", "bytes", "chunks"}    (chunks: number of chunks)
//     {"type": "bytes", "bytes", "chunks"}
//   Integer dict keys stay JSON numbers; string keys stay strings.
//
// rm NAME@VERSION|NAME@TAG [--force]
//   "deleted NAME@V (N chunks released)"   (V: the number deleted, also when
//   a tag was given; "chunks" is plural whatever N)
// rm NAME --all [--force]
//   "deleted NAME versions: 1, 2, 3 (N chunks released)"; without --force a
//   version with a user tag refuses the command before anything is deleted.
//
// tag NAME[@VERSION|@TAG] TAG    "tagged NAME@V as TAG"  (a ref without a
//                                number is resolved to one first)
// untag NAME TAG                 "removed tag TAG from NAME"
//
// retention NAME                 "retention of NAME: POLICY" (POLICY as
//   DescribeRetentionPolicy writes it, "none" when unset)
// retention NAME [--keep-last N] [--keep-every-steps K] [--keep-best N
//   --metric KEY [--higher-is-better]] | --clear
//   "retention of NAME: POLICY" and, unless --clear, "applied after each
//   save; versions it would delete now: 1, 4" (or "none")
// prune NAME [--dry-run]         "deleted NAME versions: 1, 4" ("would
//   delete ..." with --dry-run; "none" when nothing goes)
//
// gc [--json]
//   fields: chunks removed, bytes removed, orphan uploads removed
//   json: {"chunks_removed", "bytes_removed", "orphan_uploads_removed"}
//
// usage [PREFIX] [--json]
//   table NAMESPACE  USED  QUOTA  USE%   (QUOTA "none" and USE% "-" without a
//   quota); PREFIX (team, team/run-1/model) picks its namespace, else every
//   namespace the token can list. json: [{"namespace", "used_bytes",
//   "quota_bytes"}, ...] (quota_bytes 0: no limit)
//
// put NAME FILE, import FILE NAME  [--metadata KEY=VALUE]... [--tag T]...
//   "saved NAME@V (...)" / "imported FILE as NAME@V (...)", then
//   "retention deleted NAME versions: 1, 2" if the name's retention policy
//   deleted versions after this save.
// get REF FILE [--key KEY]
//   without --key the version must be one bytes or tensor leaf (a tree: exit 2)
//
// health
//   "SERVING" and exit 0; otherwise the error and a non-zero exit code.
//
// stats [--json]
//   fields: server version, chunk size, checkpoints, versions, chunks,
//   stored bytes, logical bytes, dedup ratio ("%.2f"), disk bytes, active
//   uploads
//   json: {"server_version", "chunk_size", "max_message_bytes",
//          "checkpoints", "versions", "chunks", "stored_bytes",
//          "logical_bytes", "dedup_ratio" (a float), "disk_bytes",
//          "active_uploads"}
//
// EXIT CODES (see kExit* in cli/commands.h)
//   0 success
//   1 other errors (INTERNAL, DATA_LOSS, RESOURCE_EXHAUSTED, UNKNOWN, ...)
//   2 usage: bad command line, or INVALID_ARGUMENT (bad name, version, tag)
//   3 NOT_FOUND            4 UNAVAILABLE (cannot connect, not serving)
//   5 DEADLINE_EXCEEDED    6 FAILED_PRECONDITION / ALREADY_EXISTS
//   7 UNAUTHENTICATED / PERMISSION_DENIED

#include <grpc/support/log.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"

#ifndef CKPT_VERSION
#define CKPT_VERSION "unknown"
#endif

namespace ckpt::cli {
namespace {

// Longest --timeout: a day is plenty for a gc on a large store.
constexpr double kMaxTimeout = 86400;

constexpr const char* kFooter = R"(Exit codes:
  0  success
  1  other errors (INTERNAL, DATA_LOSS, RESOURCE_EXHAUSTED, ...)
  2  usage error, or INVALID_ARGUMENT (bad name, version or tag)
  3  NOT_FOUND (no such checkpoint, version or tag)
  4  UNAVAILABLE (cannot reach the server, or it is not serving)
  5  DEADLINE_EXCEEDED (an RPC took longer than --timeout)
  6  FAILED_PRECONDITION or ALREADY_EXISTS (e.g. rm of a tagged version without --force)
  7  UNAUTHENTICATED or PERMISSION_DENIED
Errors are printed to stderr as "ckpt: <CODE_NAME>: <message>".

Token: the first given of --token, --token-file, CKPT_TOKEN, CKPT_TOKEN_FILE
(flags win over the environment; prefer a file or the variable: flags show in ps).

Examples:
  ckpt ls team/
  ckpt show team/run-42/model@best
  ckpt tag team/run-42/model@7 best
  ckpt retention team/run-42/model --keep-last 3 --keep-best 1 --metric loss
  ckpt import model.pt team/run-42/model --step 500 --metadata loss=0.21
  ckpt usage team
  ckpt rm team/run-42/scratch --all
  CKPT_SERVER=ckpt.internal:50051 ckpt stats --json
  CKPT_TOKEN_FILE=~/.ckpt-token ckpt --tls --ca-cert ca.pem --server ckpt.internal:50051 ls
)";

void AddGlobalOptions(CLI::App& app, GlobalOptions& options) {
  app.add_option("--server", options.server, "Server address HOST:PORT")
      ->envname("CKPT_SERVER")
      ->capture_default_str()
      ->type_name("HOST:PORT");
  app.add_option("--timeout", options.timeout_seconds,
                 "Seconds to wait for the connection and for each RPC")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            double seconds = 0;
            if (absl::SimpleAtod(text, &seconds) && seconds > 0 && seconds <= kMaxTimeout) {
              return "";
            }
            return absl::StrCat("must be a number of seconds in (0, ", kMaxTimeout, "], got '",
                                text, "'");
          },
          "", "SECONDS"))
      ->capture_default_str()
      ->type_name("SECONDS");
  // No envname: ResolveToken applies the environment only when neither flag
  // is given, so that an explicit --token-file beats $CKPT_TOKEN.
  app.add_option("--token", options.token,
                 "Bearer token (prefer CKPT_TOKEN or --token-file: flags show in ps). The token "
                 "is the first given of --token, --token-file, CKPT_TOKEN, CKPT_TOKEN_FILE")
      ->type_name("TOKEN");
  app.add_option("--token-file", options.token_file,
                 "File holding the bearer token (env CKPT_TOKEN_FILE)")
      ->type_name("PATH");
  app.add_flag("--tls", options.tls, "Connect with TLS (implied by --ca-cert and --cert)")
      ->envname("CKPT_TLS");
  app.add_option("--ca-cert", options.ca_cert,
                 "PEM CA certificates that verify the server (default: system roots)")
      ->envname("CKPT_CA_CERT")
      ->type_name("PATH");
  app.add_option("--cert", options.cert, "PEM client certificate, for servers requiring one")
      ->envname("CKPT_CERT")
      ->type_name("PATH");
  app.add_option("--key", options.key, "PEM private key of --cert")
      ->envname("CKPT_KEY")
      ->type_name("PATH");
  app.add_option("--tls-server-name", options.tls_server_name,
                 "Name the server certificate must carry, if not the --server host")
      ->envname("CKPT_TLS_SERVER_NAME")
      ->type_name("NAME");
}

// The token's source, first given of: --token, --token-file, $CKPT_TOKEN,
// $CKPT_TOKEN_FILE. Explicit flags win over the environment.
void ResolveToken(GlobalOptions& options) {
  if (!options.token.empty() || !options.token_file.empty()) return;
  const char* token = std::getenv("CKPT_TOKEN");
  const char* token_file = std::getenv("CKPT_TOKEN_FILE");
  if (token != nullptr && *token != '\0') {
    options.token = token;
  } else if (token_file != nullptr && *token_file != '\0') {
    options.token_file = token_file;
  }
}

void PrintError(const absl::Status& status) {
  std::cerr << "ckpt: " << absl::StatusCodeToString(status.code()) << ": " << status.message()
            << std::endl;
}

// gRPC's own log lines (a failed TLS handshake, a refused connection) come
// before the CLI's message, which says the same in words: dropped unless
// GRPC_VERBOSITY asks for them.
void QuietGrpcLogs() {
  if (std::getenv("GRPC_VERBOSITY") != nullptr) return;
  gpr_set_log_function([](gpr_log_func_args*) {});
}

int Main(int argc, char** argv) {
  QuietGrpcLogs();
  CLI::App app("ckpt: inspect and manage checkpoints on a ckpt server", "ckpt");
  app.set_version_flag("--version", "ckpt " CKPT_VERSION);
  app.require_subcommand(1);
  // Global options are accepted after the subcommand too.
  app.fallthrough();

  GlobalOptions options;
  AddGlobalOptions(app, options);
  CommandTable table;
  AddCommands(app, table);
  // Set after the subcommands exist so they do not inherit it: their --help
  // stays short.
  app.footer(kFooter);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" with exit code 0; every real parse
    // error is a usage error.
    const int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }

  const Action* action = table.Selected(app);
  if (action == nullptr) {  // require_subcommand(1) makes this unreachable
    std::cerr << app.help();
    return kExitUsage;
  }
  ResolveToken(options);
  Context context(options, std::cout, std::cerr);
  absl::Status status = (*action)(context);
  std::cout.flush();
  if (status.ok() && !std::cout) {
    status = absl::InternalError("cannot write to standard output");
  }
  if (!status.ok()) {
    PrintError(status);
    return ExitCodeFor(status);
  }
  return kExitOk;
}

}  // namespace
}  // namespace ckpt::cli

int main(int argc, char** argv) { return ckpt::cli::Main(argc, argv); }
