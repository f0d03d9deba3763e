#include "common/names.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ckpt {
namespace {

bool IsNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
         c == '-';
}

// Printable form of a user string for error messages: control characters
// escaped, long strings cut.
std::string Printable(absl::string_view s) {
  std::string out;
  for (char c : s.substr(0, 80)) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      absl::StrAppend(&out, "\\x", absl::Hex(u, absl::kZeroPad2));
    } else {
      out.push_back(c);
    }
  }
  if (s.size() > 80) out += "...";
  return out;
}

absl::Status CheckSegments(absl::string_view name, bool allow_trailing_slash) {
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i]) && name[i] != '/') {
      unsigned char u = static_cast<unsigned char>(name[i]);
      std::string what = (u < 0x20 || u == 0x7f)
                             ? absl::StrCat("control character \\x", absl::Hex(u, absl::kZeroPad2))
                             : absl::StrCat("character '", std::string(1, name[i]), "'");
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid name '", Printable(name), "': ", what, " at offset ", i,
          " (allowed: A-Z a-z 0-9 . _ - and / between segments)"));
    }
  }
  std::vector<absl::string_view> segments = absl::StrSplit(name, '/');
  for (size_t i = 0; i < segments.size(); ++i) {
    absl::string_view seg = segments[i];
    if (seg.empty()) {
      if (allow_trailing_slash && i + 1 == segments.size() && i > 0) continue;
      return absl::InvalidArgumentError(
          absl::StrCat("invalid name '", Printable(name), "': empty path segment"));
    }
    if (seg == "." || seg == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid name '", Printable(name), "': '", seg, "' is not allowed as a segment"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("invalid name: empty");
  if (name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(absl::StrCat("invalid name '", Printable(name),
                                                   "': ", name.size(), " bytes (max ",
                                                   kMaxNameLength, ")"));
  }
  return CheckSegments(name, /*allow_trailing_slash=*/false);
}

absl::Status ValidatePrefix(absl::string_view prefix) {
  if (prefix.empty()) return absl::OkStatus();
  if (prefix.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid prefix: ", prefix.size(), " bytes (max ", kMaxNameLength, ")"));
  }
  // A prefix may end inside a segment ("team/ru"), so only "." or ".." as a
  // complete segment followed by "/" is rejected.
  for (char c : prefix) {
    if (!IsNameChar(c) && c != '/') return CheckSegments(prefix, true);
  }
  std::vector<absl::string_view> segments = absl::StrSplit(prefix, '/');
  for (size_t i = 0; i + 1 < segments.size(); ++i) {
    if (segments[i].empty() || segments[i] == "." || segments[i] == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid prefix '", Printable(prefix), "'"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateTag(absl::string_view tag) {
  if (tag.empty()) return absl::InvalidArgumentError("invalid tag: empty");
  if (tag.size() > kMaxTagLength) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid tag '", Printable(tag), "': ", tag.size(), " bytes (max ", kMaxTagLength, ")"));
  }
  bool all_digits = true;
  for (char c : tag) {
    if (!IsNameChar(c)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid tag '", Printable(tag), "' (allowed: A-Z a-z 0-9 . _ -)"));
    }
    all_digits = all_digits && absl::ascii_isdigit(static_cast<unsigned char>(c));
  }
  if (all_digits) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid tag '", tag, "': all digits (reads as a version number)"));
  }
  return absl::OkStatus();
}

absl::string_view NamespaceOf(absl::string_view name) {
  return name.substr(0, name.find('/'));
}

absl::StatusOr<KeyPattern> KeyPattern::Compile(absl::string_view pattern) {
  if (pattern.empty()) return absl::InvalidArgumentError("invalid pattern: empty");
  if (pattern.size() > kMaxPatternLength) {
    return absl::InvalidArgumentError(absl::StrCat("invalid pattern: ", pattern.size(),
                                                   " bytes (max ", kMaxPatternLength, ")"));
  }
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\') {
      if (i + 1 == pattern.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid pattern '", Printable(pattern), "': trailing '\\'"));
      }
      ++i;
    } else if (pattern[i] == '[') {
      size_t j = i + 1;
      if (j < pattern.size() && (pattern[j] == '!' || pattern[j] == '^')) ++j;
      if (j < pattern.size() && pattern[j] == ']') ++j;  // "]" first is literal
      while (j < pattern.size() && pattern[j] != ']') ++j;
      if (j == pattern.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid pattern '", Printable(pattern), "': unterminated '['"));
      }
      i = j;
    }
  }
  return KeyPattern(std::string(pattern));
}

namespace {

// Matches a class starting at p[i] == '['; sets `end` past the closing ']'.
bool MatchClass(absl::string_view p, size_t i, char c, size_t* end) {
  size_t j = i + 1;
  bool negate = false;
  if (p[j] == '!' || p[j] == '^') {
    negate = true;
    ++j;
  }
  bool hit = false;
  bool first = true;
  while (first || p[j] != ']') {
    first = false;
    char lo = p[j];
    if (j + 2 < p.size() && p[j + 1] == '-' && p[j + 2] != ']') {
      char hi = p[j + 2];
      if (lo <= c && c <= hi) hit = true;
      j += 3;
    } else {
      if (c == lo) hit = true;
      ++j;
    }
  }
  *end = j + 1;
  return hit != negate;
}

}  // namespace

bool KeyPattern::Matches(absl::string_view key) const {
  absl::string_view p = pattern_;
  size_t pi = 0, ki = 0;
  size_t star_p = absl::string_view::npos, star_k = 0;
  while (ki < key.size()) {
    if (pi < p.size()) {
      char pc = p[pi];
      if (pc == '*') {
        star_p = pi++;
        star_k = ki;
        continue;
      }
      if (pc == '?') {
        ++pi;
        ++ki;
        continue;
      }
      if (pc == '[') {
        size_t end;
        if (MatchClass(p, pi, key[ki], &end)) {
          pi = end;
          ++ki;
          continue;
        }
      } else {
        if (pc == '\\') pc = p[pi + 1];
        if (pc == key[ki]) {
          pi += (p[pi] == '\\') ? 2 : 1;
          ++ki;
          continue;
        }
      }
    }
    if (star_p == absl::string_view::npos) return false;
    pi = star_p + 1;
    ki = ++star_k;
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

std::string EscapeGlob(absl::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '*' || c == '?' || c == '[' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<std::vector<KeyPattern>> CompilePatterns(
    const std::vector<std::string>& patterns) {
  if (patterns.size() > kMaxPatterns) {
    return absl::InvalidArgumentError(
        absl::StrCat(patterns.size(), " patterns (max ", kMaxPatterns, ")"));
  }
  std::vector<KeyPattern> out;
  out.reserve(patterns.size());
  for (const auto& p : patterns) {
    auto compiled = KeyPattern::Compile(p);
    if (!compiled.ok()) return compiled.status();
    out.push_back(*std::move(compiled));
  }
  return out;
}

absl::StatusOr<VersionRef> ParseVersionRef(absl::string_view text) {
  VersionRef ref;
  size_t at = text.rfind('@');
  ref.name = std::string(text.substr(0, at));
  absl::Status status = ValidateName(ref.name);
  if (!status.ok()) return status;
  if (at == absl::string_view::npos) return ref;
  absl::string_view sel = text.substr(at + 1);
  if (!sel.empty() && absl::SimpleAtoi(sel, &ref.version) && ref.version > 0) return ref;
  ref.version = 0;
  status = ValidateTag(sel);
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid version or tag after '@' in '",
                                                   Printable(text), "': ", status.message()));
  }
  ref.tag = std::string(sel);
  return ref;
}

}  // namespace ckpt
