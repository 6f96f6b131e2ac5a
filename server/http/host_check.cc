#include "server/http/host_check.h"

#include <arpa/inet.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"

namespace traind::http {
namespace {

bool IsIpAddress(const std::string& name) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, name.c_str(), buf) == 1 ||
         inet_pton(AF_INET6, name.c_str(), buf) == 1;
}

}  // namespace

std::string HostName(absl::string_view host) {
  host = absl::StripAsciiWhitespace(host);
  absl::string_view name = host;
  if (absl::ConsumePrefix(&name, "[")) {
    const size_t close = name.find(']');
    if (close == absl::string_view::npos) return "";
    absl::string_view rest = name.substr(close + 1);
    name = name.substr(0, close);
    if (!rest.empty() && !absl::StartsWith(rest, ":")) return "";
  } else if (const size_t colon = name.rfind(':'); colon != absl::string_view::npos) {
    uint32_t port = 0;
    if (name.find(':') != colon) return "";  // an unbracketed IPv6 address
    if (!absl::SimpleAtoi(name.substr(colon + 1), &port) || port > 65535) return "";
    name = name.substr(0, colon);
  }
  // "localhost." and "localhost" are the same name.
  absl::ConsumeSuffix(&name, ".");
  return absl::AsciiStrToLower(name);
}

HostCheck::HostCheck(absl::string_view listen, std::vector<std::string> allowed) {
  names_.push_back("localhost");
  const std::string own = HostName(listen);
  if (!own.empty()) names_.push_back(own);
  for (std::string& name : allowed) {
    name = absl::AsciiStrToLower(absl::StripAsciiWhitespace(name));
    if (name == "*") any_ = true;
    if (!name.empty()) names_.push_back(std::move(name));
  }
}

bool HostCheck::Allows(absl::string_view host_header) const {
  if (any_ || host_header.empty()) return true;
  const std::string name = HostName(host_header);
  if (name.empty()) return false;
  if (IsIpAddress(name)) return true;
  for (const std::string& allowed : names_) {
    if (allowed == name) return true;
    absl::string_view domain = allowed;
    // "*.example.com": any name under example.com, not example.com itself.
    if (absl::ConsumePrefix(&domain, "*") && absl::StartsWith(domain, ".") &&
        absl::EndsWith(name, domain) && name.size() > domain.size()) {
      return true;
    }
  }
  return false;
}

}  // namespace traind::http
