#include "server/http/host_check.h"

#include <gtest/gtest.h>

namespace traind::http {
namespace {

TEST(HostCheckTest, NamesTheHostWithoutPortOrBrackets) {
  EXPECT_EQ(HostName("LocalHost:8080"), "localhost");
  EXPECT_EQ(HostName("localhost."), "localhost");
  EXPECT_EQ(HostName("[::1]:80"), "::1");
  EXPECT_EQ(HostName("[::1]"), "::1");
  EXPECT_EQ(HostName("example.com"), "example.com");
  EXPECT_EQ(HostName("::1"), "");         // IPv6 needs brackets
  EXPECT_EQ(HostName("a:b"), "");         // not a port
  EXPECT_EQ(HostName("a:99999"), "");
  EXPECT_EQ(HostName("[::1]x"), "");
}

TEST(HostCheckTest, LoopbackDaemonServesAddressesAndLocalhostOnly) {
  HostCheck check("127.0.0.1:0", {});
  for (const char* ok : {"127.0.0.1:4000", "localhost:4000", "LOCALHOST", "[::1]:4000",
                         "10.1.2.3:80", ""}) {
    EXPECT_TRUE(check.Allows(ok)) << ok;
  }
  for (const char* bad : {"rebind.example:4000", "rebind.example", "localhost.evil.example",
                          "127.0.0.1.nip.io:4000", "evil.localhost.example", "[::1", "::1"}) {
    EXPECT_FALSE(check.Allows(bad)) << bad;
  }
}

TEST(HostCheckTest, ListenNameAndAdminNamesAndDomains) {
  HostCheck check("traind.internal:8080", {"Traind.Example.COM", "*.corp.example"});
  EXPECT_TRUE(check.Allows("traind.internal:8080"));
  EXPECT_TRUE(check.Allows("traind.example.com"));
  EXPECT_TRUE(check.Allows("a.corp.example:443"));
  EXPECT_TRUE(check.Allows("b.a.corp.example"));
  EXPECT_FALSE(check.Allows("corp.example"));
  EXPECT_FALSE(check.Allows("evilcorp.example"));
  EXPECT_FALSE(check.Allows("example.com"));
  EXPECT_TRUE(HostCheck("0.0.0.0:80", {"*"}).Allows("anything.example"));
}

}  // namespace
}  // namespace traind::http
