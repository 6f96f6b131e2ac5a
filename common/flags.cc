#include "common/flags.h"

#include <algorithm>
#include <cstdio>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_replace.h"

namespace traind {

std::vector<std::string> NormalizeFlagDashes(int argc, char** argv) {
  std::vector<std::string> out;
  bool rest = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") rest = true;
    if (!rest && i > 0 && arg.size() > 2 && arg[0] == '-') {
      const size_t start = arg[1] == '-' ? 2 : 1;
      const size_t end = std::min(arg.find('='), arg.size());
      for (size_t k = start; k < end; ++k) {
        if (arg[k] == '-') arg[k] = '_';
      }
    }
    out.push_back(std::move(arg));
  }
  return out;
}

bool PrintHelpIfAsked(const std::vector<std::string>& args, const std::string& flag_files) {
  bool asked = false;
  for (size_t i = 1; i < args.size() && args[i] != "--"; ++i) {
    if (args[i] == "--help" || args[i] == "-help" || args[i] == "-h") asked = true;
  }
  if (!asked) return false;
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (flag->Filename().find(flag_files) != std::string::npos) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const auto* a, const auto* b) { return a->Name() < b->Name(); });
  std::printf("%s\n\nFlags (--some-flag and --some_flag are the same):\n",
              std::string(absl::ProgramUsageMessage()).c_str());
  for (const auto* f : flags) {
    const std::string name = absl::StrReplaceAll(f->Name(), {{"_", "-"}});
    std::printf("  --%s (default: %s)\n      %s\n", name.c_str(),
                f->DefaultValue().empty() ? "\"\"" : f->DefaultValue().c_str(), f->Help().c_str());
  }
  return true;
}

}  // namespace traind
