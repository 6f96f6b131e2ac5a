// trainctl: the command-line client of traind. Each subcommand is one or a
// few RPCs plus rendering, human-readable by default or JSON (one object per
// line) with --output=json.
#ifndef TRAIND_CLIENT_TRAINCTL_H_
#define TRAIND_CLIENT_TRAINCTL_H_

#include <string>
#include <vector>

namespace traind::client {

// Runs the subcommand in `args` (positional arguments after flag parsing,
// args[0] being the program). Returns the process exit code.
int RunTrainctl(const std::vector<std::string>& args);

}  // namespace traind::client

#endif  // TRAIND_CLIENT_TRAINCTL_H_
