#include "common/file_util.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "common/crc32c.h"
#include "common/flags.h"
#include "common/sha256.h"

namespace traind {
namespace {

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256 incremental;
  incremental.Update("a");
  incremental.Update("bc");
  EXPECT_EQ(incremental.HexDigest(), Sha256Hex("abc"));
}

TEST(Crc32cTest, KnownVectorsAndTfRecordMask) {
  EXPECT_EQ(Crc32c("123456789"), 0xe3069283u);  // the CRC-32C check value
  EXPECT_EQ(Crc32c(""), 0u);
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8a9136aau);  // RFC 3720 B.4
  EXPECT_EQ(MaskedCrc32c(""), 0xa282ead8u);
  const uint32_t crc = Crc32c("abc");
  EXPECT_EQ(MaskedCrc32c("abc"), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
}

TEST(FileUtilTest, AtomicWriteReplacesAndLeavesNoTemporary) {
  const auto dir = std::filesystem::path(testing::TempDir()) / "file_util_test";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "f.bin").string();
  ASSERT_TRUE(WriteFileAtomically(path, "first").ok());
  ASSERT_TRUE(WriteFileAtomically(path, std::string("sec\0ond", 7)).ok());
  auto got = ReadFile(path);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, std::string("sec\0ond", 7));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  auto sha = Sha256File(path);
  ASSERT_TRUE(sha.ok());
  EXPECT_EQ(*sha, Sha256Hex(*got));
}

TEST(FileUtilTest, MissingFileIsNotFound) {
  EXPECT_EQ(ReadFile("/nonexistent/x").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(WriteFileAtomically("/nonexistent/dir/x", "y").ok());
}

TEST(FlagsTest, DashesBecomeUnderscoresInFlagNamesOnly) {
  const char* argv[] = {"prog", "--port-file=/a-b", "-per-class", "7", "job-1", "--", "--x-y"};
  auto out = NormalizeFlagDashes(7, const_cast<char**>(argv));
  EXPECT_EQ(out[1], "--port_file=/a-b");
  EXPECT_EQ(out[2], "-per_class");
  EXPECT_EQ(out[4], "job-1");
  EXPECT_EQ(out[6], "--x-y");
}

}  // namespace
}  // namespace traind
