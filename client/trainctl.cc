#include "client/trainctl.h"

#include <cstdio>
#include <memory>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/connection.h"
#include "client/flags.h"
#include "client/status.h"

namespace traind::client {
namespace {

absl::Status Dispatch(const std::vector<std::string>& args) {
  const std::string out = absl::GetFlag(FLAGS_output);
  if (out != "human" && out != "json") return UsageError("--output: must be human or json");
  if (args.size() < 2) return UsageError("missing command; see trainctl --help");
  const std::string& cmd = args[1];
  // The command's one argument, or why it is missing.
  auto one_arg = [&](const char* what) -> absl::StatusOr<std::string> {
    if (args.size() < 3) return UsageError(absl::StrCat(cmd, ": missing ", what));
    if (args.size() > 3) return UsageError(absl::StrCat(cmd, ": unexpected argument ", args[3]));
    return args[2];
  };
  using JobCommand = absl::Status (*)(Connection&, const std::string&);
  const std::pair<const char*, JobCommand> job_commands[] = {
      {"status", Status}, {"cancel", Cancel}, {"weights", Weights}, {"delete", Delete},
      {"plot", Plot},     {"report", Report}, {"pause", Pause},     {"resume", Resume},
  };
  if (cmd == "demo-data") {
    auto dir = one_arg("DIR");
    return dir.ok() ? DemoData(*dir) : dir.status();
  }
  auto connection = Connection::Open();
  if (!connection.ok()) return connection.status();
  Connection& c = **connection;
  if (cmd == "submit") {
    if (args.size() > 2) return UsageError(absl::StrCat("submit: unexpected argument ", args[2]));
    return Submit(c);
  }
  if (cmd == "list") return List(c);
  if (cmd == "priority") {
    if (args.size() != 4) return UsageError("priority: usage: trainctl priority JOB LEVEL");
    return SetPriority(c, args[2], args[3]);
  }
  if (cmd == "tensorboard") return Tensorboard(c, args);
  if (cmd == "classify") return Classify(c, args);
  if (cmd == "watch") {
    auto id = one_arg("JOB");
    return id.ok() ? Watch(c, *id, absl::GetFlag(FLAGS_after)) : id.status();
  }
  for (const auto& [name, command] : job_commands) {
    if (cmd != name) continue;
    auto id = one_arg("JOB");
    return id.ok() ? command(c, *id) : id.status();
  }
  return UsageError(absl::StrCat("unknown command \"", cmd, "\"; see trainctl --help"));
}

}  // namespace

int RunTrainctl(const std::vector<std::string>& args) {
  const absl::Status status = Dispatch(args);
  if (!status.ok()) {
    std::fprintf(stderr, "trainctl: %s\n", std::string(status.message()).c_str());
  }
  return ExitCode(status);
}

}  // namespace traind::client
