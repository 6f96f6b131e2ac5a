// trainctl's subcommands. Each returns OK or an error value (client/status.h)
// and prints its result (client/render.h); none exits the process.
#ifndef TRAIND_CLIENT_COMMANDS_H_
#define TRAIND_CLIENT_COMMANDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/connection.h"

namespace traind::client {

// Jobs (job_commands.cc).
absl::Status Submit(Connection& c);
// Follows a job to its end, reconnecting after a dropped connection from
// the last event printed; JobEndedError unless it SUCCEEDED.
absl::Status Watch(Connection& c, const std::string& id, int64_t after);
absl::Status Status(Connection& c, const std::string& id);
absl::Status List(Connection& c);
absl::Status Cancel(Connection& c, const std::string& id);
absl::Status Delete(Connection& c, const std::string& id);
absl::Status Pause(Connection& c, const std::string& id);
absl::Status Resume(Connection& c, const std::string& id);
// trainctl priority JOB LOW|NORMAL|HIGH|URGENT (any case).
absl::Status SetPriority(Connection& c, const std::string& id, const std::string& priority);

// What jobs produce (artifact_commands.cc).
// Downloads to -o FILE via FILE.part, verified, continuing an interrupted
// download.
absl::Status Weights(Connection& c, const std::string& id);
absl::Status Plot(Connection& c, const std::string& id);
absl::Status Report(Connection& c, const std::string& id);
// args: trainctl classify JOB IMAGE...
absl::Status Classify(Connection& c, const std::vector<std::string>& args);
// args: trainctl tensorboard [JOB]
absl::Status Tensorboard(Connection& c, const std::vector<std::string>& args);
absl::Status DemoData(const std::string& dir);

}  // namespace traind::client

#endif  // TRAIND_CLIENT_COMMANDS_H_
