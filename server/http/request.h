// What the HTTP front end reads from a request and how it answers an error,
// apart from the routes: status codes, error bodies, query and form
// parameters, the session cookie, the cross-site rule. Unit-tested on plain
// httplib::Request values (tests/http/request_test.cc).
//
// Thread-safety: functions of their arguments only.
#ifndef TRAIND_SERVER_HTTP_REQUEST_H_
#define TRAIND_SERVER_HTTP_REQUEST_H_

#include <httplib.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace traind::http {

// The session cookie POST /v1/login sets.
inline constexpr char kCookie[] = "traind_token";

// The HTTP status of a gRPC code, as Google's APIs and grpc-gateway map it.
int HttpStatus(absl::StatusCode code);

// {"error": {"code", "status", "message"}}, as Google's JSON APIs answer.
std::string ErrorJson(const absl::Status& status);

// The integer `name` from the query, or from a plain field of a multipart
// form; `fallback` when absent. INVALID_ARGUMENT when it is not a T (an
// int32 field given 2^32 + 1 is refused, not wrapped).
template <typename T>
absl::StatusOr<T> IntParam(const httplib::Request& req, const char* name, T fallback) {
  std::string text;
  if (req.has_param(name)) {
    text = req.get_param_value(name);
  } else if (req.has_file(name)) {
    text = req.get_file_value(name).content;
  } else {
    return fallback;
  }
  T v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not an integer: \"", text, "\""));
  }
  return v;
}

// An enum value from its name (any case) or number.
template <typename Enum>
absl::StatusOr<Enum> EnumParam(const std::string& text, const char* name,
                               bool (*parse)(const std::string&, Enum*), bool (*valid)(int)) {
  Enum v{};
  if (parse(absl::AsciiStrToUpper(text), &v)) return v;
  int n = 0;
  if (absl::SimpleAtoi(text, &n) && valid(n)) return static_cast<Enum>(n);
  return absl::InvalidArgumentError(absl::StrCat(name, ": unknown value \"", text, "\""));
}

// The session cookie's token; empty when there is none.
std::string CookieToken(const httplib::Request& req);

// GET and HEAD change nothing.
bool Safe(const httplib::Request& req);

// A page from another site making the browser change something here: its
// Origin names another host. (The session cookie is SameSite=Strict too;
// this also guards a daemon without tokens on loopback.)
bool CrossSite(const httplib::Request& req);

}  // namespace traind::http

#endif  // TRAIND_SERVER_HTTP_REQUEST_H_
