// The web page's HTML: what a hostile name, key, tag or metadata value
// becomes, links and their encoding, the NaN/Inf highlight and pagination.

#include "server/web_pages.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/tensor_diff.h"

namespace ckpt::server::web {
namespace {

Node Dict(uint32_t size, std::string key = "") {
  Node n;
  n.kind = NodeKind::kDict;
  n.size = size;
  if (!key.empty()) n.key = key;
  return n;
}

Node Tensor(std::string key, uint64_t nan) {
  Node n;
  n.kind = NodeKind::kTensor;
  n.key = std::move(key);
  n.tensor.dtype = DType::kFloat32;
  n.tensor.shape = {4};
  n.data.size = 16;
  TensorStats s;
  s.count = 4;
  s.min = 1;
  s.max = 2;
  s.nan = nan;
  n.tensor.stats = s;
  return n;
}

VersionInfo Version() {
  VersionInfo v;
  v.name = "team/a b&c";
  v.version = 3;
  v.tags = {"<best>", "latest"};
  v.metadata = {{"note", "\"><img src=x onerror=alert(1)>"}};
  v.parent = "team/x'y@2";
  v.data_bytes = 1000;
  v.new_bytes = 250;
  return v;
}

TEST(WebPages, EscapesEverythingAUserControls) {
  EXPECT_EQ(Html("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
  EXPECT_EQ(UrlParam("team/a b&c=d?e#é"), "team%2Fa%20b%26c%3Dd%3Fe%23%C3%A9");
  const Tree tree = {Dict(1), Tensor("<script>alert(1)</script>", 0)};
  const std::string html = VersionBody(Version(), {}, tree, {});
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("<img"), std::string::npos);
  EXPECT_EQ(html.find("<best>"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("&lt;best&gt;"), std::string::npos);
  // Names in links are percent-encoded, then escaped for the attribute.
  EXPECT_NE(html.find("href=\"/checkpoint?name=team%2Fa%20b%26c\""), std::string::npos) << html;
  EXPECT_NE(html.find("href=\"/version?name=team%2Fx%27y&amp;v=2\""), std::string::npos) << html;
  // Dedup: 750 of 1000 bytes.
  EXPECT_NE(html.find("(75%)"), std::string::npos);
  const std::string page = Document({"a<b", "tok\"en", true, "1.0"}, "BODY");
  EXPECT_NE(page.find("<title>a&lt;b - ckpt</title>"), std::string::npos);
  EXPECT_NE(page.find("tok&quot;en"), std::string::npos);
  EXPECT_NE(page.find("/logout"), std::string::npos);
  EXPECT_EQ(Document({"t", "anonymous", false, "1.0"}, "").find("/logout"), std::string::npos);
}

TEST(WebPages, NonFiniteRowsAreMarkedAndCanBeListedAlone) {
  const Tree tree = {Dict(3), Tensor("ok", 0), Tensor("bad", 2), Tensor("fine", 0)};
  const std::string html = VersionBody(Version(), {}, tree, {});
  EXPECT_NE(html.find("1 tensor holds NaN or infinite values: <code>bad</code>"),
            std::string::npos);
  EXPECT_NE(html.find("<tr class=\"nonfinite\"><td><code>bad</code> <span class=\"bad\">NaN/Inf"),
            std::string::npos)
      << html;
  EXPECT_EQ(html.find("<tr class=\"nonfinite\"><td><code>ok</code>"), std::string::npos);
  TreeView only;
  only.only_nonfinite = true;
  const std::string filtered = VersionBody(Version(), {}, tree, only);
  EXPECT_NE(filtered.find("Leaves 1-1 of 1 holding NaN or infinities"), std::string::npos);
  EXPECT_EQ(filtered.find("<code>ok</code>"), std::string::npos);
}

TEST(WebPages, TreePages) {
  Tree tree = {Dict(kTreePageRows + 10)};
  for (size_t i = 0; i < kTreePageRows + 10; ++i) tree.push_back(Tensor(absl::StrCat("t", i), 0));
  const std::string first = VersionBody(Version(), {}, tree, {});
  EXPECT_NE(first.find(absl::StrCat("Leaves 1-", kTreePageRows, " of ", kTreePageRows + 10)),
            std::string::npos);
  EXPECT_NE(first.find(absl::StrCat("&amp;offset=", kTreePageRows, "\">Next rows")),
            std::string::npos);
  TreeView second;
  second.offset = kTreePageRows;
  const std::string next = VersionBody(Version(), {}, tree, second);
  EXPECT_NE(next.find(absl::StrCat("<code>t", kTreePageRows + 9, "</code>")), std::string::npos);
  EXPECT_EQ(next.find("<code>t0</code>"), std::string::npos);
  EXPECT_NE(next.find("&amp;offset=0\">Previous rows"), std::string::npos);
  // An offset past the end shows nothing, not a crash.
  second.offset = 1'000'000;
  EXPECT_NE(VersionBody(Version(), {}, tree, second).find("of 510"), std::string::npos);
}

TEST(WebPages, LineageAndDiffRows) {
  LineageStep deleted;
  deleted.ref = "team/old@1";
  deleted.note = "deleted";
  const std::string html = VersionBody(Version(), {deleted}, {Dict(0)}, {});
  // A deleted parent is named, not linked.
  EXPECT_NE(html.find("<li>team/a b&amp;c@3 (this version)</li><li>team/old@1 (deleted)</li>"),
            std::string::npos)
      << html;

  VersionDiff diff;
  diff.a = Version();
  diff.b = Version();
  diff.b.version = 4;
  TensorDiff changed;
  changed.key = "w<1>";
  changed.dtype_a = changed.dtype_b = DType::kFloat32;
  changed.shape_a = changed.shape_b = {2};
  changed.rel_l2 = 0.125;
  changed.max_abs_diff = 3;
  diff.tensors.push_back(changed);
  diff.changed = 1;
  diff.truncated = 7;
  const std::string body = DiffBody(diff);
  EXPECT_NE(body.find("<tr class=\"changed\"><td><code>w&lt;1&gt;</code></td><td>changed</td>"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("title=\"0.125\">0.125</span>"), std::string::npos);
  EXPECT_NE(body.find("7 more entries not shown"), std::string::npos);
}

TEST(WebPages, HttpStatuses) {
  EXPECT_EQ(HttpStatusOf(absl::InvalidArgumentError("")), 400);
  EXPECT_EQ(HttpStatusOf(absl::UnauthenticatedError("")), 401);
  EXPECT_EQ(HttpStatusOf(absl::PermissionDeniedError("")), 403);
  EXPECT_EQ(HttpStatusOf(absl::NotFoundError("")), 404);
  EXPECT_EQ(HttpStatusOf(absl::UnavailableError("")), 503);
  EXPECT_EQ(HttpStatusOf(absl::DataLossError("")), 500);
  EXPECT_NE(ErrorBody(404, absl::NotFoundError("no <x>")).find("404 NOT_FOUND: no &lt;x&gt;"),
            std::string::npos);
}

}  // namespace
}  // namespace ckpt::server::web
