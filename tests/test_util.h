// Helpers shared by the unit tests.
#ifndef TRAIND_TESTS_TEST_UTIL_H_
#define TRAIND_TESTS_TEST_UTIL_H_

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

namespace traind::testing_util {

// An empty folder for the running test, named after `prefix` and the test:
// ctest runs test cases as parallel processes, so they must not share one.
inline std::filesystem::path FreshTestDir(const std::string& prefix) {
  const auto dir =
      std::filesystem::path(testing::TempDir()) /
      (prefix + "_" + testing::UnitTest::GetInstance()->current_test_info()->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace traind::testing_util

#endif  // TRAIND_TESTS_TEST_UTIL_H_
