// Command-line helpers shared by traind and trainctl.
#ifndef TRAIND_COMMON_FLAGS_H_
#define TRAIND_COMMON_FLAGS_H_

#include <string>
#include <vector>

namespace traind {

// Returns argv with "--some-flag[=v]" spelled "--some_flag[=v]", so users can
// write flags with dashes while absl flag names use underscores. Arguments
// after a bare "--" are left alone.
std::vector<std::string> NormalizeFlagDashes(int argc, char** argv);

// For "--help" or "-h" among `args`: prints the program's usage message and
// the flags defined in files whose path contains `flag_files` (dashes in
// their names, as users may write them), and returns true: the caller exits
// with 0. (absl's own --help exits with 1.) "--helpfull" stays absl's.
bool PrintHelpIfAsked(const std::vector<std::string>& args, const std::string& flag_files);

}  // namespace traind

#endif  // TRAIND_COMMON_FLAGS_H_
