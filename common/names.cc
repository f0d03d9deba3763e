#include "common/names.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace ckpt {
namespace {

bool IsNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

std::string Printable(absl::string_view s) { return Excerpt(s, 80); }

absl::Status CheckSegments(absl::string_view name, bool allow_trailing_slash) {
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i]) && name[i] != '/') {
      unsigned char u = static_cast<unsigned char>(name[i]);
      std::string what = (u < 0x20 || u == 0x7f)
                             ? absl::StrCat("control character \\x", absl::Hex(u, absl::kZeroPad2))
                             : absl::StrCat("character '", std::string(1, name[i]), "'");
      return absl::InvalidArgumentError(
          absl::StrCat("invalid name '", Printable(name), "': ", what, " at offset ", i,
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
      return absl::InvalidArgumentError(absl::StrCat("invalid name '", Printable(name), "': '", seg,
                                                     "' is not allowed as a segment"));
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
      return absl::InvalidArgumentError(absl::StrCat("invalid prefix '", Printable(prefix), "'"));
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
      return absl::InvalidArgumentError(
          absl::StrCat("invalid tag '", Printable(tag), "' (allowed: A-Z a-z 0-9 . _ -)"));
    }
    all_digits = all_digits && absl::ascii_isdigit(static_cast<unsigned char>(c));
  }
  if (tag[0] == '.' || tag[0] == '-') {
    return absl::InvalidArgumentError(absl::StrCat("invalid tag '", Printable(tag),
                                                   "': must start with a letter, a digit or '_'"));
  }
  if (all_digits) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid tag '", tag, "': all digits (reads as a version number)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateUserTag(absl::string_view tag) {
  absl::Status status = ValidateTag(tag);
  if (!status.ok()) return status;
  if (tag == kLatestTag) {
    return absl::InvalidArgumentError(
        "tag 'latest' is automatic (it follows the newest version) and cannot be set or removed");
  }
  return absl::OkStatus();
}

std::string Excerpt(absl::string_view s, size_t max_bytes) {
  std::string out;
  for (char c : s.substr(0, max_bytes)) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      absl::StrAppend(&out, "\\x", absl::Hex(u, absl::kZeroPad2));
    } else {
      out.push_back(c);
    }
  }
  if (s.size() > max_bytes) absl::StrAppend(&out, "... (", s.size(), " bytes)");
  return out;
}

absl::string_view NamespaceOf(absl::string_view name) { return name.substr(0, name.find('/')); }

absl::StatusOr<KeyPattern> KeyPattern::Compile(absl::string_view pattern) {
  if (pattern.empty()) return absl::InvalidArgumentError("invalid pattern: empty");
  if (pattern.size() > kMaxPatternLength) {
    return absl::InvalidArgumentError(absl::StrCat("invalid pattern '", Printable(pattern),
                                                   "': ", pattern.size(), " bytes (max ",
                                                   kMaxPatternLength, ")"));
  }
  KeyPattern out;
  out.pattern_ = std::string(pattern);
  out.segments_.emplace_back();
  auto atoms = [&out]() -> std::vector<Atom>& { return out.segments_.back().atoms; };
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '*') {
      out.has_star_ = true;
      out.leading_star_ = out.leading_star_ || i == 0;
      out.trailing_star_ = true;
      if (!atoms().empty()) out.segments_.emplace_back();
      continue;
    }
    Atom atom;
    auto set = [&atom](unsigned char b) { atom.bits[b >> 6] |= uint64_t{1} << (b & 63); };
    if (c == '?') {
      for (auto& word : atom.bits) word = ~uint64_t{0};
    } else if (c == '\\') {
      if (i + 1 == pattern.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid pattern '", Printable(pattern), "': trailing '\\'"));
      }
      set(static_cast<unsigned char>(pattern[++i]));
    } else if (c == '[') {
      size_t j = i + 1;
      bool negate = false;
      if (j < pattern.size() && (pattern[j] == '!' || pattern[j] == '^')) {
        negate = true;
        ++j;
      }
      const size_t first = j;
      // "]" right after "[" or "[!" is a literal member.
      while (j < pattern.size() && (pattern[j] != ']' || j == first)) {
        const unsigned char lo = static_cast<unsigned char>(pattern[j]);
        if (j + 2 < pattern.size() && pattern[j + 1] == '-' && pattern[j + 2] != ']') {
          const unsigned char hi = static_cast<unsigned char>(pattern[j + 2]);
          for (unsigned b = lo; b <= hi; ++b) set(static_cast<unsigned char>(b));
          j += 3;
        } else {
          set(lo);
          ++j;
        }
      }
      if (j >= pattern.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid pattern '", Printable(pattern), "': unterminated '['"));
      }
      if (negate) {
        for (auto& word : atom.bits) word = ~word;
      }
      i = j;
    } else {
      set(static_cast<unsigned char>(c));
    }
    atoms().push_back(atom);
    out.trailing_star_ = false;
  }
  if (out.segments_.size() > 1 && atoms().empty()) out.segments_.pop_back();
  for (size_t i = 0; i < out.segments_.size(); ++i) {
    Segment& seg = out.segments_[i];
    const size_t m = seg.atoms.size();
    const bool anchored = !out.has_star_ || (i == 0 && !out.leading_star_) ||
                          (i + 1 == out.segments_.size() && !out.trailing_star_);
    if (anchored) {
      out.cost_per_key_ += m;
      continue;
    }
    if (m <= kNaiveSegment) {
      out.cost_per_byte_ = std::max(out.cost_per_byte_, std::max<size_t>(m, 1));
      continue;
    }
    seg.words = (m + 63) / 64;
    seg.masks.assign(256 * seg.words, 0);
    for (unsigned c = 0; c < 256; ++c) {
      uint64_t* row = &seg.masks[c * seg.words];
      for (size_t i = 0; i < m; ++i) {
        if (seg.atoms[i].Accepts(static_cast<unsigned char>(c))) {
          row[i / 64] |= uint64_t{1} << (i % 64);
        }
      }
    }
    out.cost_per_byte_ = std::max(out.cost_per_byte_, seg.words);
  }
  return out;
}

bool KeyPattern::MatchesAt(const Segment& seg, absl::string_view key, size_t at) {
  const size_t m = seg.atoms.size();
  if (at > key.size() || key.size() - at < m) return false;
  for (size_t i = 0; i < m; ++i) {
    if (!seg.atoms[i].Accepts(static_cast<unsigned char>(key[at + i]))) return false;
  }
  return true;
}

size_t KeyPattern::Find(const Segment& seg, absl::string_view key, size_t from) {
  const size_t m = seg.atoms.size();
  if (from > key.size() || key.size() - from < m) return absl::string_view::npos;
  if (seg.masks.empty()) {
    for (size_t at = from; at + m <= key.size(); ++at) {
      if (MatchesAt(seg, key, at)) return at;
    }
    return absl::string_view::npos;
  }
  // Shift-and: bit i of `state` is set when atoms[0..i] match the bytes
  // ending at the current position; 64 positions per word, carried.
  const size_t words = seg.words;
  std::vector<uint64_t> state(words, 0);
  const uint64_t last_bit = uint64_t{1} << ((m - 1) % 64);
  for (size_t k = from; k < key.size(); ++k) {
    const uint64_t* accept = &seg.masks[static_cast<unsigned char>(key[k]) * words];
    uint64_t carry = 1;  // a match may start at k
    for (size_t w = 0; w < words; ++w) {
      const uint64_t next_carry = state[w] >> 63;
      state[w] = ((state[w] << 1) | carry) & accept[w];
      carry = next_carry;
    }
    if (state[words - 1] & last_bit) return k + 1 - m;
  }
  return absl::string_view::npos;
}

bool KeyPattern::Matches(absl::string_view key) const {
  if (!has_star_) {
    return key.size() == segments_[0].atoms.size() && MatchesAt(segments_[0], key, 0);
  }
  // Stars split the pattern: the first segment is anchored at the start
  // (empty when the pattern starts with "*"), the last at the end (empty
  // when it ends with "*"), the others are taken leftmost-first.
  size_t first = 0, last = segments_.size();
  size_t pos = 0;
  size_t end = key.size();
  if (!leading_star_) {
    if (!MatchesAt(segments_[0], key, 0)) return false;
    pos = segments_[0].atoms.size();
    first = 1;
  }
  if (!trailing_star_ && last > first) {
    const auto& tail = segments_[last - 1];
    const size_t n = tail.atoms.size();
    if (key.size() < pos + n || !MatchesAt(tail, key, key.size() - n)) return false;
    end = key.size() - n;
    --last;
  }
  absl::string_view middle = key.substr(0, end);
  for (size_t s = first; s < last; ++s) {
    const size_t at = Find(segments_[s], middle, pos);
    if (at == absl::string_view::npos) return false;
    pos = at + segments_[s].atoms.size();
  }
  return pos <= end;
}

std::string EscapeGlob(absl::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '*' || c == '?' || c == '[' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<std::vector<KeyPattern>> CompilePatterns(const std::vector<std::string>& patterns) {
  if (patterns.size() > kMaxPatterns) {
    return absl::InvalidArgumentError(
        absl::StrCat(patterns.size(), " patterns (max ", kMaxPatterns, ")"));
  }
  size_t total = 0;
  for (const auto& p : patterns) total += p.size();
  if (total > kMaxPatternBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("patterns of ", total, " bytes in all (max ", kMaxPatternBytes, ")"));
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

absl::Status ValidateParent(absl::string_view parent) {
  auto ref = ParseVersionRef(parent);
  if (!ref.ok() || ref->version == 0 || parent.find('@') == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parent '", Excerpt(parent), "' must be NAME@VERSION (a version number, not a tag)"));
  }
  return absl::OkStatus();
}

}  // namespace ckpt
