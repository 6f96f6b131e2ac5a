// Which Host headers the HTTP front end answers: the guard against DNS
// rebinding. A page on another site whose name an attacker points at
// 127.0.0.1 reaches a loopback daemon as "same origin" in the browser; only
// the Host header still names the attacker's site. Names this daemon does
// not serve are refused before any route runs, reads included.
//
// Thread-safety: immutable after construction.
#ifndef TRAIND_SERVER_HTTP_HOST_CHECK_H_
#define TRAIND_SERVER_HTTP_HOST_CHECK_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace traind::http {

class HostCheck {
 public:
  // `listen`: the --http-listen value ("host:port"); its host is served.
  // `allowed`: further names (--http-allowed-hosts): exact names, "*.domain"
  // for every name under a domain, or "*" to turn the check off (a proxy in
  // front checks instead).
  HostCheck(absl::string_view listen, std::vector<std::string> allowed);

  // Whether a request with this Host header value ("name", "name:port",
  // "[v6]:port") is for this daemon: an IP address (no name to rebind),
  // localhost, the listening host, or an allowed name. A request without a
  // Host header (HTTP/1.0; never a browser) passes.
  bool Allows(absl::string_view host_header) const;

 private:
  std::vector<std::string> names_;  // lower case
  bool any_ = false;
};

// The name part of a Host header value, lower case, without port or
// brackets; empty when it is malformed.
std::string HostName(absl::string_view host_header);

}  // namespace traind::http

#endif  // TRAIND_SERVER_HTTP_HOST_CHECK_H_
