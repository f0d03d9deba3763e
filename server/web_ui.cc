#include "server/web_ui.h"

#include <civetweb.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/queries.h"
#include "server/service_internal.h"
#include "server/web_pages.h"

namespace ckpt::server {
namespace {

constexpr char kCookie[] = "ckpt_token";
constexpr long long kMaxLoginBody = 4096;
constexpr char kSecurityHeaders[] =
    "Content-Security-Policy: default-src 'none'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "X-Frame-Options: DENY\r\n"
    "Referrer-Policy: no-referrer\r\n";

struct Response {
  int status = 200;
  std::string content_type = "text/html; charset=utf-8";
  std::string body;
  /// Extra "Name: value\r\n" lines.
  std::string headers;
  bool cacheable = false;
  /// What the request's log line and metrics record.
  absl::Status outcome;
};

Response Redirect(absl::string_view location, std::string headers = {}) {
  Response r;
  r.status = 303;
  r.headers = absl::StrCat("Location: ", location, "\r\n", headers);
  return r;
}

void Send(mg_connection* conn, const Response& r, bool head) {
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: "
            "%s\r\n%s%s\r\n",
            r.status, mg_get_response_code_text(conn, r.status), r.content_type.c_str(),
            r.body.size(), r.cacheable ? "max-age=3600" : "no-store", kSecurityHeaders,
            r.headers.c_str());
  if (!head && !r.body.empty()) mg_write(conn, r.body.data(), r.body.size());
}

// The metrics and log label of a path: one of a fixed few.
const char* RouteName(absl::string_view path) {
  static constexpr const char* kRoutes[] = {"/",      "/checkpoint", "/version",        "/diff",
                                            "/login", "/logout",     "/static/ckpt.css"};
  for (const char* r : kRoutes) {
    if (path == r) return r;
  }
  return "other";
}

}  // namespace

// One HTTP request, from parsing to the response.
struct WebRequest {
  WebUi* ui;
  mg_connection* conn;
  const mg_request_info* info;

  CheckpointService& service() const { return *ui->service_; }
  storage::Store* store() const { return ui->service_->store(); }

  // A query parameter, decoded; nullopt when absent.
  std::optional<std::string> Param(const char* name) const {
    if (info->query_string == nullptr) return std::nullopt;
    const size_t size = std::strlen(info->query_string);
    std::string out(size + 1, '\0');
    const int n = mg_get_var(info->query_string, size, name, out.data(), out.size());
    if (n < 0) return std::nullopt;
    out.resize(n);
    return out;
  }

  absl::StatusOr<uint64_t> Number(const char* name, uint64_t fallback) const {
    std::optional<std::string> text = Param(name);
    if (!text.has_value() || text->empty()) return fallback;
    uint64_t value = 0;
    if (!absl::SimpleAtoi(*text, &value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter ", name, " '", Excerpt(*text), "' is not a number"));
    }
    return value;
  }

  // The caller: an Authorization header, else the login form's cookie.
  absl::StatusOr<std::shared_ptr<const Principal>> Authenticate() const {
    std::vector<absl::string_view> values;
    std::string from_cookie;
    if (const char* header = mg_get_header(conn, "Authorization"); header != nullptr) {
      values.emplace_back(header);
    } else if (const char* cookies = mg_get_header(conn, "Cookie"); cookies != nullptr) {
      char buf[1024];
      const int n = mg_get_cookie(cookies, kCookie, buf, sizeof(buf));
      std::string token;
      if (n > 0 && absl::WebSafeBase64Unescape(absl::string_view(buf, n), &token)) {
        from_cookie = absl::StrCat("Bearer ", token);
        values.emplace_back(from_cookie);
      }
    }
    return service().auth().Authenticate(values);
  }

  Response Page(const Principal& principal, std::string title, std::string body,
                int status = 200) const {
    web::Frame frame;
    frame.title = std::move(title);
    frame.principal = principal.name();
    frame.logged_in = !service().auth().development_mode();
    frame.server_version = CKPT_VERSION;
    Response r;
    r.status = status;
    r.body = web::Document(frame, body);
    return r;
  }

  Response LoginPage(absl::string_view message, int status) const {
    web::Frame frame;
    frame.title = "Log in";
    frame.principal = "not logged in";
    frame.server_version = CKPT_VERSION;
    Response r;
    r.status = status;
    r.body = web::Document(frame, web::LoginBody(message));
    if (status == 401) {
      r.headers = "WWW-Authenticate: Bearer realm=\"ckpt\"\r\n";
      r.outcome = absl::UnauthenticatedError(message.empty() ? "no token" : message);
    } else if (status != 200) {
      r.outcome = absl::InvalidArgumentError(message);
    }
    return r;
  }

  Response Login() const {
    const bool post = std::strcmp(info->request_method, "POST") == 0;
    if (!post) return LoginPage("", 200);
    if (info->content_length > kMaxLoginBody) {
      return LoginPage(absl::StrCat("the form is over ", kMaxLoginBody, " bytes"), 413);
    }
    std::string body(kMaxLoginBody, '\0');
    size_t got = 0;
    while (got < body.size()) {
      const int n = mg_read(conn, body.data() + got, body.size() - got);
      if (n <= 0) break;
      got += n;
    }
    body.resize(got);
    std::string token(body.size() + 1, '\0');
    const int n = mg_get_var(body.data(), body.size(), "token", token.data(), token.size());
    if (n <= 0) return LoginPage("enter a token", 401);
    token.resize(n);
    const std::string bearer = absl::StrCat("Bearer ", token);
    absl::StatusOr<std::shared_ptr<const Principal>> principal =
        service().auth().Authenticate({bearer});
    if (!principal.ok()) return LoginPage(principal.status().message(), 401);
    if (service().auth().development_mode()) return Redirect("/");
    return Redirect("/",
                    absl::StrCat("Set-Cookie: ", kCookie, "=", absl::WebSafeBase64Escape(token),
                                 "; Path=/; HttpOnly; SameSite=Lax\r\n"));
  }

  Response Logout() const {
    return Redirect("/login", absl::StrCat("Set-Cookie: ", kCookie,
                                           "=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0\r\n"));
  }

  // "/": checkpoints under a prefix and the store's totals.
  absl::StatusOr<Response> Checkpoints(const Principal& principal) const {
    const std::string prefix = Param("prefix").value_or("");
    CKPT_ASSIGN_OR_RETURN(CheckpointPage page,
                          ListReadableCheckpoints(store(), principal, prefix,
                                                  Param("after").value_or(""), web::kListPageRows));
    CKPT_ASSIGN_OR_RETURN(StoreStats totals, store()->Stats());
    return Page(principal, "Checkpoints",
                web::CheckpointsBody(prefix, totals, page.checkpoints, page.next_page_token));
  }

  // "/checkpoint?name=N[&before=V]": versions newest first.
  absl::StatusOr<Response> Checkpoint(const Principal& principal) const {
    const std::string name = Param("name").value_or("");
    CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, name));
    CKPT_ASSIGN_OR_RETURN(VersionInfo latest, store()->GetVersion(name, {}));
    CKPT_ASSIGN_OR_RETURN(uint64_t before, Number("before", latest.version));
    const uint64_t after = before > web::kListPageRows ? before - web::kListPageRows : 0;
    CKPT_ASSIGN_OR_RETURN(std::vector<VersionInfo> versions,
                          store()->ListVersions(name, after, web::kListPageRows));
    versions.erase(std::remove_if(versions.begin(), versions.end(),
                                  [before](const VersionInfo& v) { return v.version > before; }),
                   versions.end());
    std::reverse(versions.begin(), versions.end());
    CKPT_ASSIGN_OR_RETURN(RetentionPolicy retention, store()->GetRetention(name));
    return Page(principal, name, web::VersionsBody(name, versions, after, retention));
  }

  // "/version?name=N&v=V" (or &tag=T): a version, its lineage and tree.
  absl::StatusOr<Response> Version(const Principal& principal) const {
    const std::string name = Param("name").value_or("");
    CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, name));
    CKPT_ASSIGN_OR_RETURN(uint64_t number, Number("v", 0));
    CKPT_ASSIGN_OR_RETURN(VersionInfo version,
                          store()->GetVersion(name, {number, Param("tag").value_or("")}));
    CKPT_ASSIGN_OR_RETURN(Tree tree, store()->GetTree(name, version.version));
    std::vector<web::LineageStep> lineage;
    std::set<std::string> seen = {absl::StrCat(name, "@", version.version)};
    for (std::string ref = version.parent; !ref.empty() && lineage.size() < web::kMaxLineage;) {
      web::LineageStep& step = lineage.emplace_back();
      step.ref = ref;
      ref.clear();
      if (!seen.insert(step.ref).second) {
        step.note = "loop";
        break;
      }
      absl::StatusOr<VersionRef> parsed = ParseVersionRef(step.ref);
      if (!parsed.ok()) {
        step.note = "not a valid reference";
      } else if (!principal.Check(Right::kRead, parsed->name).ok()) {
        step.note = "not readable with this token";
      } else if (absl::StatusOr<VersionInfo> parent =
                     store()->GetVersion(parsed->name, {parsed->version, parsed->tag});
                 parent.ok()) {
        step.version = *parent;
        ref = parent->parent;
      } else {
        step.note = absl::IsNotFound(parent.status()) ? "deleted" : parent.status().ToString();
      }
    }
    web::TreeView view;
    CKPT_ASSIGN_OR_RETURN(view.offset, Number("offset", 0));
    view.only_nonfinite = Param("nonfinite").value_or("") == "1";
    return Page(principal, absl::StrCat(name, "@", version.version),
                web::VersionBody(version, lineage, tree, view));
  }

  // "/diff?a=REF&b=REF".
  absl::StatusOr<Response> Diff(const Principal& principal) const {
    const std::optional<std::string> a = Param("a"), b = Param("b");
    if (!a.has_value() || !b.has_value()) {
      return absl::InvalidArgumentError("a diff needs a=NAME@VERSION and b=NAME@VERSION");
    }
    CKPT_ASSIGN_OR_RETURN(VersionRef ref_a, ParseVersionRef(*a));
    CKPT_ASSIGN_OR_RETURN(VersionRef ref_b, ParseVersionRef(*b));
    CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, ref_a.name));
    CKPT_RETURN_IF_ERROR(CheckName(principal, Right::kRead, ref_b.name));
    DiffQuery query;
    query.name_a = ref_a.name;
    query.a = {ref_a.version, ref_a.tag};
    query.name_b = ref_b.name;
    query.b = {ref_b.version, ref_b.tag};
    CKPT_ASSIGN_OR_RETURN(VersionDiff diff, DiffVersions(store(), query));
    return Page(
        principal,
        absl::StrCat(diff.a.name, "@", diff.a.version, " vs ", diff.b.name, "@", diff.b.version),
        web::DiffBody(diff));
  }

  Response Handle() {
    const absl::string_view path = info->local_uri != nullptr ? info->local_uri : "";
    const absl::string_view method = info->request_method;
    if (path == "/static/ckpt.css") {
      Response r;
      r.content_type = "text/css; charset=utf-8";
      r.body = std::string(web::StyleSheet());
      r.cacheable = true;
      return r;
    }
    const bool read = method == "GET" || method == "HEAD";
    if (!read && !(method == "POST" && path == "/login")) {
      Response r;
      r.status = 405;
      r.content_type = "text/plain; charset=utf-8";
      r.body = "the ckpt web page is read-only: GET and HEAD only (and POST /login)\n";
      r.headers = path == "/login" ? "Allow: GET, HEAD, POST\r\n" : "Allow: GET, HEAD\r\n";
      // Recorded (log, ckpt_requests_total) as gRPC's "method not supported".
      r.outcome = absl::UnimplementedError(absl::StrCat("method ", Excerpt(method)));
      return r;
    }
    if (path == "/login") return Login();
    if (path == "/logout") return Logout();
    absl::StatusOr<std::shared_ptr<const Principal>> principal = Authenticate();
    if (!principal.ok()) {
      return LoginPage(mg_get_header(conn, "Authorization") != nullptr ||
                               mg_get_header(conn, "Cookie") != nullptr
                           ? principal.status().message()
                           : "",
                       401);
    }
    absl::StatusOr<Response> page;
    if (path == "/") {
      page = Checkpoints(**principal);
    } else if (path == "/checkpoint") {
      page = Checkpoint(**principal);
    } else if (path == "/version") {
      page = Version(**principal);
    } else if (path == "/diff") {
      page = Diff(**principal);
    } else {
      page = absl::NotFoundError(absl::StrCat("no page ", Excerpt(path)));
    }
    if (page.ok()) return *std::move(page);
    const int status = web::HttpStatusOf(page.status());
    Response r =
        Page(**principal, "Error", web::ErrorBody(status, ToClientStatus(page.status())), status);
    r.outcome = page.status();
    return r;
  }

  // The message a client may see (no server paths), as the gRPC side says it.
  absl::Status ToClientStatus(const absl::Status& status) const {
    grpc::Status s = service().ToClient(status);
    return absl::Status(status.code(), s.error_message());
  }
};

namespace {

int HandleRequest(mg_connection* conn, void* ui) {
  const mg_request_info* info = mg_get_request_info(conn);
  const absl::string_view path = info->local_uri != nullptr ? info->local_uri : "";
  auto* web_ui = static_cast<WebUi*>(ui);
  WebRequest request{web_ui, conn, info};
  CallRecord record(&request.service().telemetry(), absl::StrCat("web ", RouteName(path)),
                    absl::StrCat("ipv4:", info->remote_addr, ":", info->remote_port));
  Response response;
  if (!request.service().Enter()) {
    response.status = 503;
    response.content_type = "text/plain; charset=utf-8";
    response.body = "server shutting down\n";
    response.outcome = absl::UnavailableError("server shutting down");
  } else {
    response = request.Handle();
    request.service().Leave();
  }
  Send(conn, response, std::strcmp(info->request_method, "HEAD") == 0);
  record.End(response.outcome);
  return response.status;
}

int LogMessage(const mg_connection*, const char* message) {
  std::fprintf(stderr, "ckpt-server: web page: %s\n", message);
  return 1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WebUi>> WebUi::Start(const std::string& listen,
                                                    CheckpointService* service, int threads) {
  mg_init_library(0);
  std::unique_ptr<WebUi> ui(new WebUi(service));
  const std::string thread_count = absl::StrCat(std::max(threads, 1));
  const char* options[] = {"listening_ports",
                           listen.c_str(),
                           "num_threads",
                           thread_count.c_str(),
                           "request_timeout_ms",
                           "30000",
                           "max_request_size",
                           "16384",
                           nullptr};
  mg_callbacks callbacks{};
  callbacks.log_message = LogMessage;
  ui->context_ = mg_start(&callbacks, ui.get(), options);
  if (ui->context_ == nullptr) {
    return absl::UnavailableError("the web server could not bind it");
  }
  mg_set_request_handler(ui->context_, "/", HandleRequest, ui.get());
  mg_server_port port{};
  if (mg_get_server_ports(ui->context_, 1, &port) < 1) {
    return absl::UnavailableError("the web server reports no port");
  }
  ui->port_ = port.port;
  return ui;
}

WebUi::~WebUi() {
  if (context_ != nullptr) mg_stop(context_);
  mg_exit_library();
}

}  // namespace ckpt::server
