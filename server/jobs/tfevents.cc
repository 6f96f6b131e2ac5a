#include "server/jobs/tfevents.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/crc32c.h"
#include "tensorboard/event.pb.h"

namespace traind::jobs {
namespace {

void PutLittleEndian(uint64_t v, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

absl::Status WriteError(const std::string& path) {
  return absl::InternalError(absl::StrCat("tensorboard: cannot write ", path, ": ",
                                          std::strerror(errno)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<EventFileWriter>> EventFileWriter::Create(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("tensorboard: cannot create ", dir, ": ",
                                            ec.message()));
  }
  static std::atomic<int> counter{0};
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  const std::string path =
      (std::filesystem::path(dir) /
       absl::StrCat("events.out.tfevents.", static_cast<int64_t>(now), ".", host, ".", getpid(),
                    ".", counter++))
          .string();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return WriteError(path);
  std::unique_ptr<EventFileWriter> w(new EventFileWriter(f, path));
  tensorboard::Event version;
  version.set_wall_time(now);
  version.set_file_version("brain.Event:2");
  if (auto st = w->WriteRecord(version.SerializeAsString()); !st.ok()) return st;
  if (auto st = w->Flush(); !st.ok()) return st;
  return w;
}

EventFileWriter::~EventFileWriter() { std::fclose(file_); }

absl::Status EventFileWriter::WriteRecord(const std::string& payload) {
  std::string record;
  std::string length;
  PutLittleEndian(payload.size(), 8, &length);
  record += length;
  PutLittleEndian(MaskedCrc32c(length), 4, &record);
  record += payload;
  PutLittleEndian(MaskedCrc32c(payload), 4, &record);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) {
    return WriteError(path_);
  }
  return absl::OkStatus();
}

absl::Status EventFileWriter::AddScalar(const std::string& tag, int64_t step, double value,
                                        double wall_time_seconds) {
  tensorboard::Event e;
  e.set_wall_time(wall_time_seconds);
  e.set_step(step);
  auto* v = e.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  return WriteRecord(e.SerializeAsString());
}

absl::Status EventFileWriter::Flush() {
  if (std::fflush(file_) != 0) return WriteError(path_);
  return absl::OkStatus();
}

}  // namespace traind::jobs
