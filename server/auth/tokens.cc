#include "server/auth/tokens.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace traind::auth {
namespace {

constexpr char kUnauthenticated[] =
    "missing or unknown bearer token (Authorization: Bearer; trainctl --token or $TRAINCTL_TOKEN)";

std::string Digest(absl::string_view token) {
  unsigned char out[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), out);
  return std::string(reinterpret_cast<const char*>(out), sizeof(out));
}

}  // namespace

std::optional<absl::string_view> BearerToken(absl::string_view value) {
  constexpr absl::string_view kPrefix = "Bearer ";
  if (!absl::StartsWithIgnoreCase(value, kPrefix)) return std::nullopt;
  absl::string_view token = absl::StripAsciiWhitespace(value.substr(kPrefix.size()));
  if (token.empty()) return std::nullopt;
  return token;
}

absl::StatusOr<std::vector<TokenStore::Entry>> TokenStore::Parse(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("tokens file ", path, " cannot be read"));
  std::vector<Entry> entries;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const std::string text(absl::StripAsciiWhitespace(line.substr(0, line.find('#'))));
    if (text.empty()) continue;
    std::vector<std::string> f = absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    const auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat("tokens file ", path, " line ", n, ": ", why));
    };
    if (f.size() < 2 || f.size() > 3) return bad("expected: <sha256 hex> <user> [admin]");
    if (f[0].size() != 64 || f[0].find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
      return bad("the first field must be the token's SHA-256 as 64 hex digits");
    }
    if (f.size() == 3 && f[2] != "admin") return bad("the third field may only be \"admin\"");
    Entry e;
    e.digest = absl::HexStringToBytes(absl::AsciiStrToLower(f[0]));
    e.caller.user = f[1];
    e.caller.admin = f.size() == 3;
    entries.push_back(std::move(e));
  }
  return entries;
}

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::Load(const std::string& path) {
  std::unique_ptr<TokenStore> store(new TokenStore(path));
  if (auto st = store->Reload(); !st.ok()) return st;
  return store;
}

absl::Status TokenStore::Reload() {
  auto entries = Parse(path_);
  if (!entries.ok()) return entries.status();
  absl::MutexLock lock(&mu_);
  entries_ = std::move(*entries);
  return absl::OkStatus();
}

size_t TokenStore::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

std::optional<jobs::Caller> TokenStore::Check(absl::string_view token) const {
  const std::string digest = Digest(token);
  std::optional<jobs::Caller> found;
  absl::MutexLock lock(&mu_);
  // Every entry is compared, in constant time, whatever matches.
  for (const Entry& e : entries_) {
    if (CRYPTO_memcmp(e.digest.data(), digest.data(), digest.size()) == 0) found = e.caller;
  }
  return found;
}

absl::StatusOr<jobs::Caller> Identify(const TokenStore* tokens,
                                      const std::vector<absl::string_view>& authorization,
                                      absl::string_view token) {
  if (tokens == nullptr) return jobs::Caller();  // the implicit local user
  std::optional<absl::string_view> presented;
  if (authorization.size() == 1) {
    presented = BearerToken(authorization[0]);
  } else if (authorization.empty() && !token.empty()) {
    presented = token;
  }
  if (presented) {
    if (auto caller = tokens->Check(*presented)) return *caller;
  }
  return absl::UnauthenticatedError(kUnauthenticated);
}

}  // namespace traind::auth
