// The HTTP front end's request rules on plain requests: status codes and
// error bodies, integer and enum parameters, the session cookie, and the
// cross-site rule.
#include "server/http/request.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "trainer/v1/training_service.pb.h"

namespace traind::http {
namespace {

httplib::Request Req(const std::string& method) {
  httplib::Request req;
  req.method = method;
  return req;
}

TEST(RequestTest, StatusCodesAreGrpcGatewaysAndErrorsAreGoogleJson) {
  EXPECT_EQ(HttpStatus(absl::StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kFailedPrecondition), 400);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kUnauthenticated), 401);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kPermissionDenied), 403);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kNotFound), 404);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kCancelled), 499);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kDataLoss), 500);
  EXPECT_EQ(HttpStatus(absl::StatusCode::kUnavailable), 503);
  const auto body = nlohmann::json::parse(ErrorJson(absl::NotFoundError("no job \"x\"")));
  EXPECT_EQ(body["error"]["code"], 404);
  EXPECT_EQ(body["error"]["status"], "NOT_FOUND");
  EXPECT_EQ(body["error"]["message"], "no job \"x\"");
}

TEST(RequestTest, IntegerParametersFromTheQueryOrTheFormAndNoWrapping) {
  httplib::Request req = Req("GET");
  EXPECT_EQ(*IntParam<int32_t>(req, "top_k", 5), 5);  // absent: the fallback
  req.params.emplace("top_k", "7");
  EXPECT_EQ(*IntParam<int32_t>(req, "top_k", 5), 7);
  req.params.emplace("trial", "4294967297");  // 2^32 + 1
  EXPECT_EQ(IntParam<int32_t>(req, "trial", 0).status().message(),
            "trial: not an integer: \"4294967297\"");
  EXPECT_EQ(*IntParam<int64_t>(req, "trial", 0), int64_t{4294967297});
  req.params.emplace("after", "1e3");
  EXPECT_FALSE(IntParam<int64_t>(req, "after", 0).ok());
  httplib::Request form = Req("POST");
  httplib::MultipartFormData field;
  field.name = "top_k";
  field.content = "3";
  form.files.emplace("top_k", field);
  EXPECT_EQ(*IntParam<int32_t>(form, "top_k", 5), 3);
}

TEST(RequestTest, EnumParametersByNameInAnyCaseOrByNumber) {
  auto parse = [](const std::string& text) {
    return EnumParam<trainer::v1::JobState>(text, "state", trainer::v1::JobState_Parse,
                                            trainer::v1::JobState_IsValid);
  };
  EXPECT_EQ(*parse("running"), trainer::v1::RUNNING);
  EXPECT_EQ(*parse("SUCCEEDED"), trainer::v1::SUCCEEDED);
  EXPECT_EQ(*parse("2"), static_cast<trainer::v1::JobState>(2));
  EXPECT_EQ(parse("sleeping").status().message(), "state: unknown value \"sleeping\"");
  EXPECT_FALSE(parse("999").ok());
}

TEST(RequestTest, TheSessionCookieAmongOthers) {
  httplib::Request req = Req("GET");
  EXPECT_EQ(CookieToken(req), "");
  req.headers.emplace("Cookie", "theme=dark; traind_token=abc123; x=y");
  EXPECT_EQ(CookieToken(req), "abc123");
  httplib::Request other = Req("GET");
  other.headers.emplace("Cookie", "traind_tokenx=zzz; not_traind_token=1");
  EXPECT_EQ(CookieToken(other), "");
}

TEST(RequestTest, OnlyChangesFromAnotherOriginAreCrossSite) {
  httplib::Request post = Req("POST");
  post.headers.emplace("Host", "127.0.0.1:8080");
  EXPECT_FALSE(CrossSite(post));  // no Origin: not a browser's cross-site form
  post.headers.emplace("Origin", "http://127.0.0.1:8080");
  EXPECT_FALSE(CrossSite(post));
  httplib::Request evil = Req("DELETE");
  evil.headers.emplace("Host", "127.0.0.1:8080");
  evil.headers.emplace("Origin", "https://evil.example");
  EXPECT_TRUE(CrossSite(evil));
  httplib::Request read = Req("GET");
  read.headers.emplace("Host", "127.0.0.1:8080");
  read.headers.emplace("Origin", "https://evil.example");
  EXPECT_FALSE(CrossSite(read));  // reads change nothing (the Host check guards them)
  EXPECT_TRUE(Safe(read));
  EXPECT_FALSE(Safe(evil));
}

}  // namespace
}  // namespace traind::http
