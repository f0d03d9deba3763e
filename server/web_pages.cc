#include "server/web_pages.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/text.h"

namespace ckpt::server::web {
namespace {

// An attribute-safe link: href="PATH" with HTML-escaped text.
std::string Link(absl::string_view href, absl::string_view text) {
  return absl::StrCat("<a href=\"", Html(href), "\">", Html(text), "</a>");
}

std::string CheckpointHref(absl::string_view name) {
  return absl::StrCat("/checkpoint?name=", UrlParam(name));
}

std::string VersionHref(absl::string_view name, uint64_t version) {
  return absl::StrCat("/version?name=", UrlParam(name), "&v=", version);
}

std::string DiffHref(absl::string_view a, absl::string_view b) {
  return absl::StrCat("/diff?a=", UrlParam(a), "&b=", UrlParam(b));
}

std::string Ref(const VersionInfo& v) { return absl::StrCat(v.name, "@", v.version); }

// A "<tr>" of cells already in HTML.
std::string Row(const std::vector<std::string>& cells, absl::string_view cls = "") {
  std::string out = cls.empty() ? "<tr>" : absl::StrCat("<tr class=\"", cls, "\">");
  for (const std::string& c : cells) absl::StrAppend(&out, "<td>", c, "</td>");
  out += "</tr>\n";
  return out;
}

std::string Table(absl::string_view id, const std::vector<std::string>& header,
                  absl::string_view rows) {
  std::string out = absl::StrCat("<table id=\"", id, "\"><thead><tr>");
  for (const std::string& h : header) absl::StrAppend(&out, "<th>", Html(h), "</th>");
  absl::StrAppend(&out, "</tr></thead><tbody>\n", rows, "</tbody></table>\n");
  return out;
}

// label/value pairs (values already in HTML) as a definition list.
std::string Fields(absl::string_view id,
                   const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out = absl::StrCat("<dl id=\"", id, "\">");
  for (const auto& [label, value] : fields) {
    absl::StrAppend(&out, "<dt>", Html(label), "</dt><dd>", value, "</dd>");
  }
  out += "</dl>\n";
  return out;
}

std::string Tags(const std::vector<std::string>& tags) {
  std::string out;
  for (const std::string& t : tags)
    absl::StrAppend(&out, "<span class=\"tag\">", Html(t), "</span> ");
  return out;
}

// "1.2 GiB" with the exact count as a tooltip.
std::string Bytes(uint64_t bytes) {
  return absl::StrCat("<span title=\"", bytes, " bytes\">", HumanBytes(bytes), "</span>");
}

// Bytes dedup saved a version: what it holds less what it added.
std::string Saved(const VersionInfo& v) {
  const uint64_t saved = v.data_bytes > v.new_bytes ? v.data_bytes - v.new_bytes : 0;
  if (v.data_bytes == 0) return "-";
  return absl::StrCat(Bytes(saved),
                      absl::StrFormat(" (%.0f%%)", 100.0 * static_cast<double>(saved) /
                                                       static_cast<double>(v.data_bytes)));
}

std::string ParentCell(const std::string& parent) {
  if (parent.empty()) return "";
  const size_t at = parent.rfind('@');
  uint64_t version = 0;
  if (at == std::string::npos || !absl::SimpleAtoi(parent.substr(at + 1), &version)) {
    return Html(parent);
  }
  return Link(VersionHref(parent.substr(0, at), version), parent);
}

// Six significant digits, the exact value as a tooltip.
std::string Number(double v) {
  return absl::StrCat("<span title=\"", Html(FormatFloat(v)), "\">",
                      Html(std::isfinite(v) ? absl::StrFormat("%.6g", v) : FormatFloat(v)),
                      "</span>");
}

std::string Count(uint64_t n) {
  return n == 0 ? "0" : absl::StrCat("<span class=\"bad\">", n, "</span>");
}

std::string ShapeOf(DType dtype, const std::vector<int64_t>& shape) {
  if (dtype == DType::kUnspecified) return "";
  return Html(absl::StrCat(DTypeName(dtype), " ", ShapeText(shape)));
}

const char* ChangeClass(TensorChange change) {
  switch (change) {
    case TensorChange::kChanged:
      return "changed";
    case TensorChange::kOnlyInA:
      return "only_in_a";
    case TensorChange::kOnlyInB:
      return "only_in_b";
    case TensorChange::kMetaChanged:
      return "meta_changed";
  }
  return "";
}

}  // namespace

std::string Html(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string UrlParam(absl::string_view text) {
  std::string out;
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (absl::ascii_isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += c;
    } else {
      absl::StrAppendFormat(&out, "%%%02X", u);
    }
  }
  return out;
}

std::string Document(const Frame& frame, absl::string_view body) {
  std::string out = absl::StrCat(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width\">"
      "<title>",
      Html(frame.title),
      " - ckpt</title><link rel=\"stylesheet\" href=\"/static/ckpt.css\"></head>\n<body>"
      "<header><a class=\"home\" href=\"/\">ckpt</a> <span class=\"who\">",
      Html(frame.principal), "</span>");
  if (frame.logged_in) out += " <a href=\"/logout\">log out</a>";
  absl::StrAppend(&out, "</header>\n<main><h1>", Html(frame.title), "</h1>\n", body,
                  "</main>\n<footer>ckpt-server ", Html(frame.server_version),
                  " &middot; read-only</footer></body></html>\n");
  return out;
}

absl::string_view StyleSheet() {
  return R"css(body { font-family: sans-serif; margin: 0; color: #222; }
header { background: #234; color: #fff; padding: .5em 1em; }
header a, header .who { color: #fff; margin-right: 1em; }
header a.home { font-weight: bold; }
main { padding: 0 1em 1em; }
footer { color: #777; font-size: small; padding: 1em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.num { text-align: right; }
tr.nonfinite { background: #fcc; }
span.bad { color: #a00; font-weight: bold; }
span.tag { background: #def; border-radius: 3px; padding: 0 .3em; }
tr.changed { background: #ffe; }
tr.meta_changed, tr.only_in_a, tr.only_in_b { background: #eef; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dt { font-weight: bold; }
dd { margin: 0; }
p.error { color: #a00; font-weight: bold; }
.alert { background: #fcc; border: 1px solid #a00; padding: .5em; }
)css";
}

std::string CheckpointsBody(absl::string_view prefix, const std::optional<StoreStats>& totals,
                            const std::vector<CheckpointSummary>& checkpoints,
                            absl::string_view next_after) {
  std::string out = absl::StrCat(
      "<form method=\"get\" action=\"/\"><label>Prefix <input name=\"prefix\" value=\"",
      Html(prefix), "\"></label> <button type=\"submit\">List</button></form>\n");
  if (totals.has_value()) {
    const StoreStats& s = *totals;
    const double ratio = s.stored_bytes == 0 ? 1.0
                                             : static_cast<double>(s.logical_bytes) /
                                                   static_cast<double>(s.stored_bytes);
    out += "<h2>Store totals</h2>\n";
    out += Fields("totals", {{"Checkpoints", absl::StrCat(s.checkpoints)},
                             {"Versions", absl::StrCat(s.versions)},
                             {"Logical bytes", Bytes(s.logical_bytes)},
                             {"Stored bytes", Bytes(s.stored_bytes)},
                             {"Dedup ratio", absl::StrFormat("%.2fx", ratio)},
                             {"Chunks", absl::StrCat(s.chunks)},
                             {"Disk bytes", Bytes(s.disk_bytes)},
                             {"Garbage bytes", Bytes(s.garbage_bytes)},
                             {"Uploads in flight", absl::StrCat(s.active_uploads)}});
  }
  absl::StrAppend(&out, "<h2>Checkpoints", prefix.empty() ? "" : " under ",
                  prefix.empty() ? "" : Html(prefix), "</h2>\n");
  if (checkpoints.empty()) return out + "<p>No checkpoints.</p>\n";
  std::string rows;
  for (const CheckpointSummary& c : checkpoints) {
    rows += Row({Link(CheckpointHref(c.name), c.name), absl::StrCat(c.num_versions),
                 Link(VersionHref(c.name, c.latest_version), absl::StrCat(c.latest_version)),
                 Html(FormatTime(c.latest_create_time_ms))});
  }
  out += Table("checkpoints", {"Name", "Versions", "Latest", "Last saved"}, rows);
  if (!next_after.empty()) {
    absl::StrAppend(
        &out, "<p>",
        Link(absl::StrCat("/?prefix=", UrlParam(prefix), "&after=", UrlParam(next_after)),
             "Next page"),
        "</p>\n");
  }
  return out;
}

std::string VersionsBody(absl::string_view name, const std::vector<VersionInfo>& versions,
                         uint64_t older_before, const RetentionPolicy& retention) {
  std::string out =
      absl::StrCat("<p>Retention: ", Html(DescribeRetentionPolicy(retention)), "</p>\n");
  if (versions.empty()) return out + "<p>No versions.</p>\n";
  std::string rows, options;
  for (const VersionInfo& v : versions) {
    rows += Row({Link(VersionHref(v.name, v.version), absl::StrCat(v.version)),
                 Html(FormatTime(v.create_time_ms)), absl::StrCat(v.step), absl::StrCat(v.epoch),
                 Tags(v.tags), absl::StrCat(v.num_tensors), Bytes(v.data_bytes), Bytes(v.new_bytes),
                 Saved(v), ParentCell(v.parent)});
    absl::StrAppend(&options, "<option value=\"", Html(Ref(v)), "\">", v.version, "</option>");
  }
  out += Table("versions",
               {"Version", "Saved", "Step", "Epoch", "Tags", "Tensors", "Size", "New bytes",
                "Dedup saved", "Parent"},
               rows);
  if (older_before > 0) {
    absl::StrAppend(
        &out, "<p>",
        Link(absl::StrCat(CheckpointHref(name), "&before=", older_before), "Older versions"),
        "</p>\n");
  }
  // Choices default to the two newest shown: B newer than A.
  const std::string second =
      absl::StrCat("value=\"", Html(Ref(versions.size() > 1 ? versions[1] : versions[0])), "\"");
  std::string options_a = options;
  if (size_t at = options_a.find(second); at != std::string::npos) {
    options_a.insert(at + second.size(), " selected");
  }
  absl::StrAppend(&out,
                  "<h2>Compare</h2><form id=\"diff-form\" method=\"get\" action=\"/diff\">"
                  "<label>A <select name=\"a\">",
                  options_a, "</select></label> <label>B <select name=\"b\">", options,
                  "</select></label> <button type=\"submit\">Diff</button></form>\n");
  return out;
}

std::string VersionBody(const VersionInfo& v, const std::vector<LineageStep>& lineage,
                        const Tree& tree, const TreeView& view) {
  std::vector<std::string> metadata;
  for (const auto& [key, value] : v.metadata) {
    metadata.push_back(absl::StrCat(Html(key), "=", Html(value)));
  }
  std::string out = Fields(
      "version",
      {{"Checkpoint", Link(CheckpointHref(v.name), v.name)},
       {"Version", absl::StrCat(v.version)},
       {"Saved", Html(FormatTime(v.create_time_ms))},
       {"Step", absl::StrCat(v.step)},
       {"Epoch", absl::StrCat(v.epoch)},
       {"Tags", Tags(v.tags)},
       {"Metadata", absl::StrJoin(metadata, ", ")},
       {"Tensors", absl::StrCat(v.num_tensors)},
       {"Size", Bytes(v.data_bytes)},
       {"New bytes", Bytes(v.new_bytes)},
       {"Dedup saved", Saved(v)},
       {"Parts (ranks)", absl::StrCat(v.world_size)},
       {"Parent", v.parent.empty() ? "none"
                                   : absl::StrCat(ParentCell(v.parent), " (",
                                                  Link(DiffHref(v.parent, Ref(v)), "diff"), ")")}});

  if (!lineage.empty()) {
    out += "<h2>Lineage</h2>\n<ol id=\"lineage\">";
    absl::StrAppend(&out, "<li>", Html(Ref(v)), " (this version)</li>");
    for (const LineageStep& step : lineage) {
      out += "<li>";
      if (step.version.has_value()) {
        absl::StrAppend(&out, ParentCell(step.ref), " saved ",
                        Html(FormatTime(step.version->create_time_ms)), " step ",
                        step.version->step);
      } else {
        absl::StrAppend(&out, Html(step.ref));
      }
      if (!step.note.empty()) absl::StrAppend(&out, " (", Html(step.note), ")");
      out += "</li>";
    }
    out += "</ol>\n";
  }

  // The leaves (tensors, scalars, bytes) by flattened key.
  const std::vector<std::string> keys = FlattenedKeys(tree);
  std::vector<size_t> leaves, nonfinite;
  for (size_t i = 0; i < tree.size(); ++i) {
    if (tree[i].is_container()) continue;
    const auto& stats = tree[i].tensor.stats;
    const bool bad =
        tree[i].kind == NodeKind::kTensor && stats.has_value() && stats->nonfinite() > 0;
    if (bad) nonfinite.push_back(i);
    if (!view.only_nonfinite || bad) leaves.push_back(i);
  }
  const std::string base = VersionHref(v.name, v.version);
  if (!nonfinite.empty()) {
    absl::StrAppend(&out, "<p class=\"alert\" id=\"nonfinite-summary\">", nonfinite.size(),
                    nonfinite.size() == 1 ? " tensor holds" : " tensors hold",
                    " NaN or infinite values: ");
    for (size_t i = 0; i < nonfinite.size() && i < 5; ++i) {
      absl::StrAppend(&out, i ? ", " : "", "<code>", Html(keys[nonfinite[i]]), "</code>");
    }
    if (nonfinite.size() > 5) out += ", ...";
    absl::StrAppend(&out, " ", Link(absl::StrCat(base, "&nonfinite=1"), "show only these"),
                    "</p>\n");
  }
  absl::StrAppend(&out, "<h2>Tree</h2>\n");
  const size_t first = std::min(view.offset, leaves.size());
  const size_t last = std::min(first + kTreePageRows, leaves.size());
  absl::StrAppend(&out, "<p>Leaves ", leaves.empty() ? 0 : first + 1, "-", last, " of ",
                  leaves.size(), view.only_nonfinite ? " holding NaN or infinities" : "", "</p>\n");
  std::string rows;
  for (size_t r = first; r < last; ++r) {
    const Node& node = tree[leaves[r]];
    std::vector<std::string> cells = {absl::StrCat("<code>", Html(keys[leaves[r]]), "</code>"),
                                      Html(DescribeNode(node))};
    const bool has_stats = node.kind == NodeKind::kTensor && node.tensor.stats.has_value();
    if (has_stats) {
      const TensorStats& s = *node.tensor.stats;
      for (double x : {s.min, s.max, s.mean, s.std, s.l2}) cells.push_back(Number(x));
      cells.push_back(Count(s.nan));
      cells.push_back(Count(s.pos_inf));
      cells.push_back(Count(s.neg_inf));
    } else {
      cells.resize(cells.size() + 8, node.kind == NodeKind::kTensor ? "-" : "");
    }
    const bool bad = has_stats && node.tensor.stats->nonfinite() > 0;
    if (bad) cells[0] += " <span class=\"bad\">NaN/Inf</span>";
    rows += Row(cells, bad ? "nonfinite" : "");
  }
  out += Table("tensors",
               {"Key", "Value", "Min", "Max", "Mean", "Std", "L2", "NaN", "+Inf", "-Inf"}, rows);
  const std::string filter = view.only_nonfinite ? "&nonfinite=1" : "";
  if (first > 0) {
    absl::StrAppend(&out, "<p>",
                    Link(absl::StrCat(base, filter, "&offset=",
                                      first > kTreePageRows ? first - kTreePageRows : 0),
                         "Previous rows"),
                    "</p>\n");
  }
  if (last < leaves.size()) {
    absl::StrAppend(&out, "<p>", Link(absl::StrCat(base, filter, "&offset=", last), "Next rows"),
                    "</p>\n");
  }
  return out;
}

std::string DiffBody(const VersionDiff& diff) {
  std::string out =
      Fields("diff-summary",
             {{"A", absl::StrCat(Link(VersionHref(diff.a.name, diff.a.version), Ref(diff.a)),
                                 " saved ", Html(FormatTime(diff.a.create_time_ms)))},
              {"B", absl::StrCat(Link(VersionHref(diff.b.name, diff.b.version), Ref(diff.b)),
                                 " saved ", Html(FormatTime(diff.b.create_time_ms)))},
              {"Identical", absl::StrCat(diff.identical)},
              {"Changed", absl::StrCat(diff.changed)},
              {"Dtype/shape changed", absl::StrCat(diff.meta_changed)},
              {"Only in A", absl::StrCat(diff.only_in_a)},
              {"Only in B", absl::StrCat(diff.only_in_b)},
              {"Bytes compared", Bytes(diff.bytes_compared)}});
  std::string rows;
  for (const TensorDiff& d : diff.tensors) {
    const bool changed = d.change == TensorChange::kChanged;
    rows += Row({absl::StrCat("<code>", Html(d.key), "</code>"), Html(TensorChangeName(d.change)),
                 ShapeOf(d.dtype_a, d.shape_a), ShapeOf(d.dtype_b, d.shape_b),
                 changed ? Number(d.rel_l2) : "", changed ? Number(d.max_abs_diff) : "",
                 changed ? Count(d.nonfinite_pairs) : ""},
                ChangeClass(d.change));
  }
  if (diff.tensors.empty()) {
    out += "<p>No differences.</p>\n";
  } else {
    out += Table(
        "diff",
        {"Key", "Change", "A", "B", "Relative L2 change", "Max abs difference", "NaN/Inf pairs"},
        rows);
  }
  if (diff.truncated > 0) {
    absl::StrAppend(&out, "<p>", diff.truncated, " more entries not shown.</p>\n");
  }
  return out;
}

std::string LoginBody(absl::string_view message) {
  std::string out;
  if (!message.empty()) absl::StrAppend(&out, "<p class=\"error\">", Html(message), "</p>\n");
  out +=
      "<p>This ckpt-server has access control on: enter a token from its tokens file "
      "(any right; what it may read is shown).</p>\n"
      "<form id=\"login\" method=\"post\" action=\"/login\"><label>Token "
      "<input type=\"password\" name=\"token\" autocomplete=\"current-password\"></label> "
      "<button type=\"submit\">Log in</button></form>\n";
  return out;
}

std::string ErrorBody(int http_status, const absl::Status& status) {
  return absl::StrCat("<p class=\"error\" id=\"error\">", http_status, " ",
                      Html(absl::StatusCodeToString(status.code())), ": ", Html(status.message()),
                      "</p>\n");
}

int HttpStatusOf(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    default:
      return 500;
  }
}

}  // namespace ckpt::server::web
