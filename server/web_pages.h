#ifndef CKPT_SERVER_WEB_PAGES_H_
#define CKPT_SERVER_WEB_PAGES_H_

// The HTML of the server's web page (--http-listen, server/web_ui.h): pure
// functions from ckpt's value types to escaped, self-contained HTML (no
// script, one stylesheet served by the server itself, no external URL), so
// that the page works offline and under a strict Content-Security-Policy.
//
// Pages and their query parameters (every value percent-encoded):
//   /                         checkpoints by prefix (prefix, after) and the
//                             store's totals
//   /checkpoint?name=N        versions of N, newest first (before), with
//                             tags, sizes, new bytes, dedup savings, parents
//                             and a form to diff two of them
//   /version?name=N&v=V       a version (or &tag=T): its fields, lineage and
//                             tree with statistics, NaN/Inf rows highlighted
//                             (offset; nonfinite=1 lists only those)
//   /diff?a=N@V&b=N@V         two versions compared (NAME, NAME@V, NAME@TAG)
//   /login, /logout           the token form (access control on)

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/retention.h"
#include "common/tensor_diff.h"
#include "common/types.h"

namespace ckpt::server::web {

/// Rows of a version's tree per page.
inline constexpr size_t kTreePageRows = 500;
/// Checkpoints and versions per page.
inline constexpr size_t kListPageRows = 200;
/// Parents followed on a version's lineage.
inline constexpr size_t kMaxLineage = 32;

/// `text` with &, <, >, " and ' escaped for HTML text and attribute values.
std::string Html(absl::string_view text);

/// `text` percent-encoded for a URL's query (every byte but A-Z a-z 0-9 - .
/// _ ~).
std::string UrlParam(absl::string_view text);

/// What every page shows around its body.
struct Frame {
  std::string title;
  /// Who is looking ("anonymous" in development mode).
  std::string principal;
  /// Whether a logout link is shown (access control is on).
  bool logged_in = false;
  std::string server_version;
};

/// A whole HTML document: header with navigation, then `body`.
std::string Document(const Frame& frame, absl::string_view body);

/// The stylesheet /static/ckpt.css.
absl::string_view StyleSheet();

/// "/": the prefix form, the store's totals (if any) and one page of
/// checkpoint names; `next_after` non-empty adds a link to the next page.
std::string CheckpointsBody(absl::string_view prefix, const std::optional<StoreStats>& totals,
                            const std::vector<CheckpointSummary>& checkpoints,
                            absl::string_view next_after);

/// "/checkpoint": its retention policy, versions newest first (they also
/// fill the diff form's choices); `older_before` > 0 adds a link to the
/// versions up to it.
std::string VersionsBody(absl::string_view name, const std::vector<VersionInfo>& versions,
                         uint64_t older_before, const RetentionPolicy& retention);

/// One step of a lineage: the parent reference and, when it could be read,
/// its version; otherwise why not ("deleted", "not readable with this
/// token", "loop").
struct LineageStep {
  std::string ref;
  std::optional<VersionInfo> version;
  std::string note;
};

/// Which rows of a version's tree a page shows.
struct TreeView {
  size_t offset = 0;
  bool only_nonfinite = false;
};

/// "/version": the version's fields, its lineage (parent first) and rows
/// of its tree's leaves with their statistics.
std::string VersionBody(const VersionInfo& version, const std::vector<LineageStep>& lineage,
                        const Tree& tree, const TreeView& view);

/// "/diff": the comparison's counts and one row per entry.
std::string DiffBody(const VersionDiff& diff);

/// "/login": the token form, with `message` (e.g. why the last token was
/// refused) above it.
std::string LoginBody(absl::string_view message);

/// An error page's body: the HTTP status and the message.
std::string ErrorBody(int http_status, const absl::Status& status);

/// The HTTP status of an error: 400, 401, 403, 404, 409, 429, 503 or 500.
int HttpStatusOf(const absl::Status& status);

}  // namespace ckpt::server::web

#endif  // CKPT_SERVER_WEB_PAGES_H_
