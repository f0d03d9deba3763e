#ifndef CKPT_SERVER_WEB_UI_H_
#define CKPT_SERVER_WEB_UI_H_

// The server's read-only web page (ckpt-server --http-listen, off by
// default): checkpoints, versions, a version's tree with statistics, diffs
// and lineage, rendered by server/web_pages.h over plain HTTP (civetweb).
//
// Access: the gRPC service's tokens. With access control on, every page but
// the login form and the stylesheet needs a token with some right; pages
// then show only what the token may read (the gRPC rules of server/auth.h:
// read on a name for its versions, tree and diffs; any valid token for the
// store's totals). The token comes from an `Authorization: Bearer TOKEN`
// header, or from the login form, which keeps it in an HttpOnly,
// SameSite=Lax cookie that is checked again on every request (a token
// removed from the tokens file stops working at the next SIGHUP). Only
// GET and HEAD are served (POST for the login form): nothing can be changed.
// Every response forbids scripts, frames and external resources
// (Content-Security-Policy) and caching.

#include <memory>
#include <string>

#include "absl/status/statusor.h"

struct mg_context;

namespace ckpt::server {

class CheckpointService;

/// A running web page. Destroying it stops it (waiting for requests in
/// flight).
class WebUi {
 public:
  /// Starts serving `service`'s store with its tokens on `listen`
  /// (HOST:PORT; port 0 picks a free one), with `threads` request threads.
  /// `service` must outlive the WebUi. Unavailable if `listen` cannot be
  /// bound.
  static absl::StatusOr<std::unique_ptr<WebUi>> Start(const std::string& listen,
                                                      CheckpointService* service, int threads = 4);
  ~WebUi();

  WebUi(const WebUi&) = delete;
  WebUi& operator=(const WebUi&) = delete;

  /// The bound port.
  int port() const { return port_; }

 private:
  explicit WebUi(CheckpointService* service) : service_(service) {}

  CheckpointService* service_;
  mg_context* context_ = nullptr;
  int port_ = 0;

  friend struct WebRequest;
};

}  // namespace ckpt::server

#endif  // CKPT_SERVER_WEB_UI_H_
