// Tokens: the file's format (errors name the line), digests only, bearer
// parsing, and who a call's credentials make its caller.
#include "server/auth/tokens.h"

#include <fstream>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "tests/test_util.h"

namespace traind::auth {
namespace {

class TokensTest : public testing::Test {
 protected:
  void SetUp() override { dir_ = testing_util::FreshTestDir("tokens_test"); }

  std::string Write(const std::string& text) {
    const std::string path = (dir_ / "tokens").string();
    std::ofstream(path) << text;
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(TokensTest, LinesNameUsersAndAdminsByDigest) {
  const std::string path = Write(absl::StrCat("# users\n", Sha256Hex("alice-secret"),
                                              " alice\n\n", Sha256Hex("root-secret"),
                                              "  root admin  # the operator\n"));
  auto tokens = TokenStore::Load(path);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ((*tokens)->size(), 2u);
  auto alice = (*tokens)->Check("alice-secret");
  ASSERT_TRUE(alice.has_value());
  EXPECT_EQ(alice->user, "alice");
  EXPECT_FALSE(alice->admin);
  EXPECT_TRUE((*tokens)->Check("root-secret")->admin);
  EXPECT_FALSE((*tokens)->Check("alice-secre").has_value());
  EXPECT_FALSE((*tokens)->Check(Sha256Hex("alice-secret")).has_value());  // the digest is no token
}

TEST_F(TokensTest, MalformedLinesAreRefusedNamingTheLine) {
  const std::string digest = Sha256Hex("t");
  EXPECT_NE(TokenStore::Load(Write("# ok\nabc alice\n")).status().message().find(
                "line 2: the first field must be the token's SHA-256 as 64 hex digits"),
            std::string::npos);
  EXPECT_NE(TokenStore::Load(Write(digest + "\n")).status().message().find(
                "line 1: expected: <sha256 hex> <user> [admin]"),
            std::string::npos);
  EXPECT_NE(TokenStore::Load(Write(digest + " bob root\n")).status().message().find(
                "line 1: the third field may only be \"admin\""),
            std::string::npos);
  EXPECT_EQ(TokenStore::Load((dir_ / "none").string()).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(TokensTest, AFailedReloadKeepsTheTokensItHad) {
  const std::string path = Write(Sha256Hex("a") + " alice\n");
  auto tokens = TokenStore::Load(path);
  ASSERT_TRUE(tokens.ok());
  Write("garbage\n");
  EXPECT_FALSE((*tokens)->Reload().ok());
  EXPECT_TRUE((*tokens)->Check("a").has_value());
  Write(Sha256Hex("b") + " bob\n");
  ASSERT_TRUE((*tokens)->Reload().ok());
  EXPECT_FALSE((*tokens)->Check("a").has_value());
  EXPECT_EQ((*tokens)->Check("b")->user, "bob");
}

TEST(BearerTokenTest, TheSchemeInAnyCaseAndBlanksDropped) {
  EXPECT_EQ(BearerToken("Bearer abc").value_or(""), "abc");
  EXPECT_EQ(BearerToken("bearer   abc  ").value_or(""), "abc");
  EXPECT_FALSE(BearerToken("Basic abc").has_value());
  EXPECT_FALSE(BearerToken("Bearer ").has_value());
  EXPECT_FALSE(BearerToken("Bearerabc").has_value());
}

TEST_F(TokensTest, IdentifyTakesOneBearerOrTheCookieNeverBoth) {
  auto tokens = TokenStore::Load(Write(Sha256Hex("a") + " alice\n" + Sha256Hex("b") + " bob\n"));
  ASSERT_TRUE(tokens.ok());
  const TokenStore* t = tokens->get();
  EXPECT_EQ(Identify(t, {"Bearer a"})->user, "alice");
  EXPECT_EQ(Identify(t, {}, "b")->user, "bob");  // the cookie, when no header
  EXPECT_EQ(Identify(t, {"Bearer a"}, "b")->user, "alice");  // the header wins
  // Two headers are ambiguous: refused even when both are known.
  EXPECT_EQ(Identify(t, {"Bearer a", "Bearer b"}).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Identify(t, {"Bearer nobody"}).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(Identify(t, {}).status().code(), absl::StatusCode::kUnauthenticated);
  // Without tokens: the implicit local user, whatever is presented.
  auto local = Identify(nullptr, {"Bearer a"});
  ASSERT_TRUE(local.ok());
  EXPECT_EQ(local->user, jobs::Caller().user);
}

}  // namespace
}  // namespace traind::auth
