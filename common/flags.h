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

}  // namespace traind

#endif  // TRAIND_COMMON_FLAGS_H_
