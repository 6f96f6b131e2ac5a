#include "server/jobs/paths.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace traind::jobs {
namespace {

namespace fs = std::filesystem;

class PathsTest : public testing::Test {
 protected:
  void SetUp() override {
    root_ = testing_util::FreshTestDir("paths_test") / "root";
    fs::create_directories(root_ / "caltech" / "a");
    fs::create_directories(root_.parent_path() / "outside");
    fs::create_directory_symlink("/etc", root_ / "etc-link");
    fs::create_directory_symlink("caltech", root_ / "inside-link");  // relative, stays inside
    // Absolute symlinks are refused even when they point inside: the kernel
    // (RESOLVE_BENEATH) cannot tell where they lead without leaving the root.
    fs::create_directory_symlink(root_ / "caltech", root_ / "absolute-link");
  }
  fs::path root_;
};

TEST_F(PathsTest, ResolvesNamesInsideTheRoot) {
  auto p = ResolveBeneath(root_.string(), "the data root", "caltech", "dataset");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, fs::canonical(root_ / "caltech").string());
  EXPECT_TRUE(ResolveBeneath(root_.string(), "the data root", "caltech/a", "dataset").ok());
  EXPECT_TRUE(ResolveBeneath(root_.string(), "the data root", "inside-link", "dataset").ok());
}

TEST_F(PathsTest, RefusesEscapesAndNamesTheField) {
  const std::string long_name(5000, 'a');
  // A relative symlink that climbs out.
  std::filesystem::create_directory_symlink("..", root_ / "up-link");
  for (const std::string& bad :
       {std::string("../../etc/passwd"), std::string("/etc/shadow"), std::string("a/../../x"),
        std::string("caltech/.."), std::string("x\0y", 3), long_name, std::string("etc-link"),
        std::string("etc-link/passwd"), std::string("up-link"), std::string("up-link/x"),
        std::string("absolute-link"),
        std::string("missing"), std::string("")}) {
    auto p = ResolveBeneath(root_.string(), "the data root", bad, "dataset");
    ASSERT_FALSE(p.ok()) << bad;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(p.status().message().substr(0, 8), "dataset:") << p.status();
    // The server's folders are not the caller's business.
    EXPECT_EQ(p.status().message().find(root_.string()), std::string::npos) << p.status();
  }
  auto missing = ResolveBeneath(root_.string(), "the data root", "missing", "dataset");
  EXPECT_EQ(missing.status().message(), "dataset: \"missing\" does not exist in the data root");
  auto no_root = ResolveBeneath((root_ / "none").string(), "the data root", "x", "dataset");
  EXPECT_EQ(no_root.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(no_root.status().message().find(root_.string()), std::string::npos);
}

}  // namespace
}  // namespace traind::jobs
