#ifndef CKPT_COMMON_NAMES_H_
#define CKPT_COMMON_NAMES_H_

// Validation of checkpoint names and tags, and glob patterns over flattened
// tensor keys.

#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ckpt {

/// Longest checkpoint name in bytes.
inline constexpr size_t kMaxNameLength = 256;
/// Longest tag in bytes.
inline constexpr size_t kMaxTagLength = 64;
/// Longest key pattern in bytes, and most patterns per request.
inline constexpr size_t kMaxPatternLength = 1024;
inline constexpr size_t kMaxPatterns = 256;

/// The automatic tag that follows the newest version.
inline constexpr absl::string_view kLatestTag = "latest";

/// OK if `name` is "/"-separated segments of [A-Za-z0-9._-], no empty, "."
/// or ".." segment, 1..kMaxNameLength bytes. InvalidArgument saying why
/// otherwise.
absl::Status ValidateName(absl::string_view name);

/// OK if `prefix` could begin a valid name (may be empty or end with "/").
absl::Status ValidatePrefix(absl::string_view prefix);

/// OK if `tag` is [A-Za-z0-9._-], 1..kMaxTagLength bytes, not all digits.
/// `latest` is valid here; SetTag rejects it separately.
absl::Status ValidateTag(absl::string_view tag);

/// The namespace of a valid name: its first segment.
absl::string_view NamespaceOf(absl::string_view name);

/// A glob over flattened keys: "*" any run of characters (including "/"),
/// "?" one character, "[abc]" / "[a-z]" / "[!a]" a class, "\" escapes.
class KeyPattern {
 public:
  /// InvalidArgument for an empty or over-long pattern, an unterminated "[",
  /// or a trailing "\".
  static absl::StatusOr<KeyPattern> Compile(absl::string_view pattern);
  /// Whether the whole `key` matches.
  bool Matches(absl::string_view key) const;
  const std::string& pattern() const { return pattern_; }

 private:
  explicit KeyPattern(std::string pattern) : pattern_(std::move(pattern)) {}
  std::string pattern_;
};

/// `text` as a pattern that matches exactly `text` ("a.b*" -> "a.b\\*").
std::string EscapeGlob(absl::string_view text);

/// Compiles each pattern (at most kMaxPatterns); the first error names it.
absl::StatusOr<std::vector<KeyPattern>> CompilePatterns(
    const std::vector<std::string>& patterns);

/// A reference "NAME", "NAME@VERSION" or "NAME@TAG" as typed on the CLI.
struct VersionRef {
  std::string name;
  uint64_t version = 0;  ///< 0: use tag.
  std::string tag;       ///< Empty with version 0: latest.
};

/// Parses NAME[@VERSION|@TAG]; validates the name and tag.
absl::StatusOr<VersionRef> ParseVersionRef(absl::string_view text);

}  // namespace ckpt

#endif  // CKPT_COMMON_NAMES_H_
