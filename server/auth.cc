#include "server/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/names.h"

namespace ckpt::server {
namespace {

constexpr size_t kMinTokenLength = 16;
constexpr absl::string_view kHashPrefix = "sha256:";

std::string Sha256(absl::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(digest), length);
}

absl::StatusOr<std::string> ParseHexDigest(absl::string_view hex) {
  if (hex.size() != 64) return absl::InvalidArgumentError("needs 64 hex digits");
  std::string out(32, '\0');
  for (size_t i = 0; i < 32; ++i) {
    int value = 0;
    for (char c : hex.substr(2 * i, 2)) {
      value <<= 4;
      if (c >= '0' && c <= '9') {
        value |= c - '0';
      } else if (c >= 'a' && c <= 'f') {
        value |= c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        value |= c - 'A' + 10;
      } else {
        return absl::InvalidArgumentError("needs 64 hex digits");
      }
    }
    out[i] = static_cast<char>(value);
  }
  return out;
}

bool ValidPrincipalName(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '@' ||
           c == '-';
  });
}

std::optional<Right> ParseRight(absl::string_view text) {
  if (text == "read") return Right::kRead;
  if (text == "write") return Right::kWrite;
  if (text == "admin") return Right::kAdmin;
  return std::nullopt;
}

absl::StatusOr<std::string> NormalizePrefix(absl::string_view prefix) {
  if (prefix == "*") return std::string("*");
  absl::string_view stripped = prefix;
  absl::ConsumeSuffix(&stripped, "/");
  absl::Status valid = ValidateName(stripped);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefix '", prefix, "' is neither '*' nor a checkpoint name: ", valid.message()));
  }
  return std::string(stripped);
}

}  // namespace

absl::string_view RightName(Right right) {
  switch (right) {
    case Right::kRead:
      return "read";
    case Right::kWrite:
      return "write";
    case Right::kAdmin:
      return "admin";
  }
  return "?";
}

bool PrefixCovers(absl::string_view prefix, absl::string_view name) {
  if (prefix == "*") return true;
  if (!absl::StartsWith(name, prefix)) return false;
  return name.size() == prefix.size() || name[prefix.size()] == '/';
}

bool Principal::Has(Right right, absl::string_view name) const {
  for (const Grant& g : grants_) {
    if (g.right >= right && PrefixCovers(g.prefix, name)) return true;
  }
  return false;
}

absl::Status Principal::Check(Right right, absl::string_view name) const {
  if (Has(right, name)) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("token '", name_, "' has no ", RightName(right), " right on '", name, "'"));
}

absl::Status Principal::CheckGlobal(Right right, absl::string_view what) const {
  for (const Grant& g : grants_) {
    if (g.right >= right && g.prefix == "*") return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat("token '", name_, "' may not ", what,
                                                  ": that needs ", RightName(right), " on '*'"));
}

std::optional<std::vector<std::string>> Principal::ReadableUnder(absl::string_view prefix) const {
  std::vector<std::string> within;
  for (const Grant& g : grants_) {
    // A grant covers every name starting with `prefix` when `prefix` lies
    // inside it ("team/" or "team/r" inside "team"); "team" itself does
    // not ("teamX" starts with it).
    if (g.prefix == "*" || absl::StartsWith(prefix, absl::StrCat(g.prefix, "/"))) {
      return std::nullopt;
    }
    // Otherwise the grant's names start with `prefix` only if the grant
    // prefix itself does.
    if (absl::StartsWith(g.prefix, prefix)) within.push_back(g.prefix);
  }
  std::sort(within.begin(), within.end());
  within.erase(std::unique(within.begin(), within.end()), within.end());
  return within;
}

absl::StatusOr<std::shared_ptr<const TokenTable>> TokenTable::Parse(absl::string_view text) {
  auto table = std::make_shared<TokenTable>();
  std::map<std::string, std::string> name_of;  // digest -> NAME
  std::map<std::string, size_t> index_of;      // digest -> entry
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    auto error = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("tokens file line ", line_number, ": ", why));
    };
    if (fields.size() != 4) {
      return error(
          absl::StrCat("expected 4 fields (NAME TOKEN RIGHT PREFIXES), found ", fields.size()));
    }
    const absl::string_view name = fields[0], token = fields[1];
    if (!ValidPrincipalName(name)) {
      return error("NAME must be 1 to 64 characters of [A-Za-z0-9._@-]");
    }
    std::string digest;
    if (absl::StartsWith(token, kHashPrefix)) {
      auto parsed = ParseHexDigest(token.substr(kHashPrefix.size()));
      if (!parsed.ok()) return error(absl::StrCat("sha256: token ", parsed.status().message()));
      digest = *std::move(parsed);
    } else {
      if (token.size() < kMinTokenLength) {
        return error(
            absl::StrCat("token of '", name, "' is shorter than ", kMinTokenLength, " characters"));
      }
      digest = Sha256(token);
    }
    std::optional<Right> right = ParseRight(fields[2]);
    if (!right)
      return error(absl::StrCat("RIGHT must be read, write or admin, not '", fields[2], "'"));
    std::vector<Grant> grants;
    for (absl::string_view prefix : absl::StrSplit(fields[3], ',', absl::SkipEmpty())) {
      auto normalized = NormalizePrefix(prefix);
      if (!normalized.ok()) return error(normalized.status().message());
      grants.push_back({*std::move(normalized), *right});
    }
    if (grants.empty()) return error("no prefix");

    auto [it, inserted] = name_of.emplace(digest, std::string(name));
    if (!inserted) {
      if (it->second != name) {
        return error(
            absl::StrCat("the token of '", name, "' is already the token of '", it->second, "'"));
      }
      Entry& entry = table->entries_[index_of[digest]];
      std::vector<Grant> all = entry.principal.grants();
      all.insert(all.end(), grants.begin(), grants.end());
      entry.principal = Principal(std::string(name), std::move(all));
      continue;
    }
    index_of[digest] = table->entries_.size();
    table->entries_.push_back({digest, Principal(std::string(name), std::move(grants))});
  }
  if (table->entries_.empty()) {
    return absl::InvalidArgumentError("tokens file defines no token");
  }
  return std::shared_ptr<const TokenTable>(std::move(table));
}

absl::StatusOr<std::shared_ptr<const TokenTable>> TokenTable::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read tokens file '", path, "'"));
  }
  std::stringstream text;
  text << in.rdbuf();
  auto table = Parse(text.str());
  if (!table.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", table.status().message()));
  }
  return table;
}

const Principal* TokenTable::Find(absl::string_view token) const {
  const std::string digest = Sha256(token);
  const Principal* found = nullptr;
  // Every entry is compared, in constant time each: the time depends on the
  // number of entries only.
  for (const Entry& e : entries_) {
    const bool equal = CRYPTO_memcmp(e.digest.data(), digest.data(), digest.size()) == 0;
    if (equal) found = &e.principal;
  }
  return found;
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::FromFile(const std::string& path) {
  if (path.empty()) return std::make_unique<Authenticator>();
  auto table = TokenTable::Load(path);
  if (!table.ok()) return table.status();
  return std::make_unique<Authenticator>(*std::move(table), path);
}

bool Authenticator::development_mode() const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_ == nullptr;
}

absl::StatusOr<std::shared_ptr<const Principal>> Authenticator::Authenticate(
    const std::vector<absl::string_view>& values) const {
  std::shared_ptr<const TokenTable> table;
  {
    std::lock_guard<std::mutex> lock(mu_);
    table = table_;
  }
  if (table == nullptr) {
    static const auto* anonymous = new std::shared_ptr<const Principal>(
        std::make_shared<Principal>("anonymous", std::vector<Grant>{{"*", Right::kAdmin}}));
    return *anonymous;
  }
  if (values.empty()) {
    return absl::UnauthenticatedError(
        "missing bearer token: send the metadata 'authorization: Bearer <token>'");
  }
  if (values.size() > 1) {
    return absl::UnauthenticatedError("more than one authorization metadata value");
  }
  absl::string_view value = values[0];
  absl::string_view scheme = value.substr(0, std::min<size_t>(value.size(), 7));
  if (!absl::EqualsIgnoreCase(scheme, "bearer ")) {
    return absl::UnauthenticatedError(
        "malformed authorization metadata: expected 'Bearer <token>'");
  }
  absl::string_view token = absl::StripAsciiWhitespace(value.substr(7));
  const Principal* principal = table->Find(token);
  if (principal == nullptr) return absl::UnauthenticatedError("invalid token");
  // Shares ownership of the table the principal lives in.
  return std::shared_ptr<const Principal>(table, principal);
}

absl::Status Authenticator::Reload() {
  if (path_.empty()) {
    return absl::FailedPreconditionError("development mode: there is no tokens file to reload");
  }
  auto table = TokenTable::Load(path_);
  if (!table.ok()) return table.status();
  std::lock_guard<std::mutex> lock(mu_);
  table_ = *std::move(table);
  return absl::OkStatus();
}

}  // namespace ckpt::server
