#ifndef CKPT_SERVER_AUTH_H_
#define CKPT_SERVER_AUTH_H_

// Access control: bearer tokens, each mapped to name prefixes with a right.
//
// Tokens file (--tokens-file): one grant per line, '#' starts a comment,
// fields separated by spaces or tabs:
//
//   # NAME    TOKEN                              RIGHT  PREFIXES
//   trainer   9c1f0e4b7a2d4e6f8a0b1c2d3e4f5a6b   write  team-a,team-b/shared
//   dashboard sha256:5e88489...(64 hex digits)   read   *
//   ops       0a1b2c3d4e5f60718293a4b5c6d7e8f9   admin  *
//
//   NAME     names the token in logs and errors (the token itself never
//            appears anywhere): [A-Za-z0-9._@-]+.
//   TOKEN    the bearer token, at least 16 characters of [!-~] (no spaces),
//            or "sha256:" and the 64 hex digits of its SHA-256, so that the
//            file need not hold the secret.
//   RIGHT    read | write | admin. write includes read, admin includes write.
//   PREFIXES comma-separated. "team" (or "team/") grants the namespace team:
//            the name "team" and every name under "team/"; "team/run-1"
//            grants that name and the names under it (never "team/run-10");
//            "*" grants every name.
// A token may appear on several lines (same NAME) to get different rights on
// different prefixes; several tokens may share a NAME (rotation).
//
// What each RPC needs (checked in server/service.cc):
//   Load, ListVersions, GetManifest,   read on the name
//   GetRetention
//   ListCheckpoints                    read; only readable names are listed,
//                                      PERMISSION_DENIED if none can be
//   Save, SetTag, DeleteTag            write on the name
//   DeleteVersion                      admin on the name (deletes data)
//   SetRetention, Prune                admin on the name (delete versions)
//   GetUsage                           read on the whole namespace
//   GetServerInfo                      any valid token
//   GarbageCollect, Backup             admin on "*" (store-wide)
//   grpc.health.v1, server reflection  open (no token)
//
// Tokens are compared as SHA-256 digests with CRYPTO_memcmp against every
// entry, so the time taken does not depend on how much of a token matched.

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckpt::server {

/// Rights, each including the ones before it.
enum class Right { kRead = 1, kWrite = 2, kAdmin = 3 };

/// "read", "write" or "admin".
absl::string_view RightName(Right right);

/// A right on the names a prefix covers.
struct Grant {
  /// Normalized: no trailing "/"; "*" for every name.
  std::string prefix;
  Right right = Right::kRead;
};

/// Whether grant prefix `prefix` (normalized) covers checkpoint `name`.
bool PrefixCovers(absl::string_view prefix, absl::string_view name);

/// Who made a request, and what it may do. Immutable; thread-safe.
class Principal {
 public:
  Principal(std::string name, std::vector<Grant> grants)
      : name_(std::move(name)), grants_(std::move(grants)) {}

  /// The token's NAME from the tokens file ("anonymous" in development
  /// mode). Safe to log.
  const std::string& name() const { return name_; }
  const std::vector<Grant>& grants() const { return grants_; }

  /// OK if this principal has `right` on checkpoint `name`; PermissionDenied
  /// naming the principal, the right and the checkpoint otherwise.
  absl::Status Check(Right right, absl::string_view name) const;

  /// OK if this principal has `right` on every name ("*");
  /// PermissionDenied saying that `what` needs it otherwise.
  absl::Status CheckGlobal(Right right, absl::string_view what) const;

  /// Limits a listing of the names starting with `prefix` to the readable
  /// ones. nullopt: every such name is readable. Otherwise the grant
  /// prefixes (each starting with `prefix`) whose names are the readable
  /// ones: a name is readable iff PrefixCovers(p, name) for one of them.
  /// An empty vector means none is readable.
  std::optional<std::vector<std::string>> ReadableUnder(absl::string_view prefix) const;

 private:
  bool Has(Right right, absl::string_view name) const;

  std::string name_;
  std::vector<Grant> grants_;
};

/// The parsed tokens file. Immutable; thread-safe.
class TokenTable {
 public:
  /// Parses the tokens file format above. InvalidArgument naming the line
  /// (never showing a token) on any error, or if no token is defined.
  static absl::StatusOr<std::shared_ptr<const TokenTable>> Parse(absl::string_view text);
  /// Reads and parses `path`. NotFound / PermissionDenied if unreadable.
  static absl::StatusOr<std::shared_ptr<const TokenTable>> Load(const std::string& path);

  /// The principal of `token`, or nullptr. Constant time in the token's
  /// content (compares the digest with every entry).
  const Principal* Find(absl::string_view token) const;

  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    std::string digest;  // SHA-256, 32 bytes
    Principal principal;
  };
  std::vector<Entry> entries_;
};

/// Authenticates requests from their `authorization` metadata. Thread-safe.
class Authenticator {
 public:
  /// Development mode: no token needed, everyone is "anonymous" with admin
  /// on "*".
  Authenticator() = default;
  /// Tokens from `table` (not null).
  explicit Authenticator(std::shared_ptr<const TokenTable> table, std::string path = {})
      : table_(std::move(table)), path_(std::move(path)) {}

  /// Builds the authenticator of --tokens-file `path`; development mode if
  /// `path` is empty. Errors of TokenTable::Load.
  static absl::StatusOr<std::unique_ptr<Authenticator>> FromFile(const std::string& path);

  /// Whether there is no tokens file.
  bool development_mode() const;

  /// The principal of a request whose `authorization` metadata values are
  /// `values` (normally one: "Bearer <token>"). Unauthenticated if there is
  /// none, more than one, a malformed one or an unknown token. In
  /// development mode always "anonymous".
  absl::StatusOr<std::shared_ptr<const Principal>> Authenticate(
      const std::vector<absl::string_view>& values) const;

  /// Re-reads the tokens file given to FromFile (SIGHUP). On error the old
  /// table stays. FailedPrecondition in development mode.
  absl::Status Reload();

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const TokenTable> table_;  // null: development mode
  std::string path_;
};

}  // namespace ckpt::server

#endif  // CKPT_SERVER_AUTH_H_
