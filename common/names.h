#ifndef CKPT_COMMON_NAMES_H_
#define CKPT_COMMON_NAMES_H_

// Validation of checkpoint names and tags, and glob patterns over flattened
// tensor keys.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckpt {

/// Longest checkpoint name in bytes.
inline constexpr size_t kMaxNameLength = 256;
/// Longest tag in bytes.
inline constexpr size_t kMaxTagLength = 64;
/// Longest key pattern in bytes, most patterns per request, and most pattern
/// bytes per request in all.
inline constexpr size_t kMaxPatternLength = 1024;
inline constexpr size_t kMaxPatterns = 256;
inline constexpr size_t kMaxPatternBytes = 64 * 1024;

/// The automatic tag that follows the newest version.
inline constexpr absl::string_view kLatestTag = "latest";

/// OK if `name` is "/"-separated segments of [A-Za-z0-9._-], no empty, "."
/// or ".." segment, 1..kMaxNameLength bytes. InvalidArgument saying why
/// otherwise.
absl::Status ValidateName(absl::string_view name);

/// OK if `prefix` could begin a valid name (may be empty or end with "/").
absl::Status ValidatePrefix(absl::string_view prefix);

/// OK if `tag` can name a version in a selector: [A-Za-z0-9._-],
/// 1..kMaxTagLength bytes, starting with a letter, digit or "_" (so never "."
/// or ".."), not all digits (that reads as a version number). `latest` is
/// valid here.
absl::Status ValidateTag(absl::string_view tag);

/// ValidateTag, and not `latest` (moved by the server, never set or removed
/// by hand). The one rule for tags a user sets (SetTag, DeleteTag, save
/// tags), in every layer.
absl::Status ValidateUserTag(absl::string_view tag);

/// A user-supplied string for an error message or a log line: control
/// characters escaped and, past `max_bytes`, cut with its full length noted
/// ("aaaa... (1000000 bytes)"), so that a hostile key cannot make a status or
/// a log line as big as itself.
std::string Excerpt(absl::string_view s, size_t max_bytes = 128);

/// The namespace of a valid name: its first segment.
absl::string_view NamespaceOf(absl::string_view name);

/// A glob over flattened keys: "*" any run of characters (including "/"),
/// "?" one character, "[abc]" / "[a-z]" / "[!a]" a class, "\" escapes.
///
/// Matching takes time linear in the key: the pattern is split at its stars
/// into segments; the first and last are anchored, the others are found
/// leftmost-first (which is exact for globs) with a bit-parallel (shift-and)
/// scan, so a key of n bytes costs O(n * ceil(L / 64)) for a longest segment
/// of L bytes, never the O(n * m) backtracking of a naive matcher.
class KeyPattern {
 public:
  /// InvalidArgument for an empty or over-long pattern, an unterminated "[",
  /// or a trailing "\".
  static absl::StatusOr<KeyPattern> Compile(absl::string_view pattern);
  /// Whether the whole `key` matches.
  bool Matches(absl::string_view key) const;
  const std::string& pattern() const { return pattern_; }
  /// Worst-case work of Matches on a key of n bytes is about
  /// n * cost_per_byte() + cost_per_key(): the segments searched for (between
  /// stars) cost per key byte (their length up to kNaiveSegment, then one
  /// per 64-bit word), the anchored first and last segments per key.
  size_t cost_per_byte() const { return cost_per_byte_; }
  size_t cost_per_key() const { return cost_per_key_; }

  /// One character position of a segment: the set of bytes it accepts.
  struct Atom {
    uint64_t bits[4] = {0, 0, 0, 0};
    bool Accepts(unsigned char c) const { return (bits[c >> 6] >> (c & 63)) & 1; }
  };
  /// The atoms between two stars. Segments longer than kNaiveSegment also
  /// carry shift-and masks: for each byte value, which positions accept it.
  struct Segment {
    std::vector<Atom> atoms;
    std::vector<uint64_t> masks;  ///< 256 x words, or empty.
    size_t words = 0;
  };
  /// Segments up to this long are tried position by position (at most this
  /// much work per key byte); longer ones use the bit-parallel scan.
  static constexpr size_t kNaiveSegment = 16;

 private:
  KeyPattern() = default;
  // Matches `seg` exactly at key[at, at + size).
  static bool MatchesAt(const Segment& seg, absl::string_view key, size_t at);
  // The first position >= from where `seg` matches; npos if none.
  static size_t Find(const Segment& seg, absl::string_view key, size_t from);

  std::string pattern_;
  // Segments between stars; with no star, one segment that must span the key.
  std::vector<Segment> segments_;
  bool has_star_ = false;
  bool leading_star_ = false;   // the pattern starts with an (unescaped) star
  bool trailing_star_ = false;  // ... ends with one
  size_t cost_per_byte_ = 0;
  size_t cost_per_key_ = 0;
};

/// `text` as a pattern that matches exactly `text` ("a.b*" -> "a.b\\*").
std::string EscapeGlob(absl::string_view text);

/// Compiles each pattern (at most kMaxPatterns, each at most
/// kMaxPatternLength bytes); the first error names it.
absl::StatusOr<std::vector<KeyPattern>> CompilePatterns(const std::vector<std::string>& patterns);

/// A reference "NAME", "NAME@VERSION" or "NAME@TAG" as typed on the CLI.
struct VersionRef {
  std::string name;
  uint64_t version = 0;  ///< 0: use tag.
  std::string tag;       ///< Empty with version 0: latest.
};

/// Parses NAME[@VERSION|@TAG]; validates the name and tag.
absl::StatusOr<VersionRef> ParseVersionRef(absl::string_view text);

/// A lineage parent: "NAME@VERSION" with a valid name and a version number
/// (not a tag: tags move). InvalidArgument saying so otherwise.
absl::Status ValidateParent(absl::string_view parent);

}  // namespace ckpt

#endif  // CKPT_COMMON_NAMES_H_
