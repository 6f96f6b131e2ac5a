// The benchmarks' command-line flags: `--name value` pairs, anywhere on the
// line; a flag that is absent takes its default.
#ifndef TRAIND_BENCH_FLAGS_H_
#define TRAIND_BENCH_FLAGS_H_

#include <cstdlib>
#include <cstring>

namespace traind::bench {

inline const char* StrArg(int argc, char** argv, const char* name, const char* def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  }
  return def;
}

inline int Arg(int argc, char** argv, const char* name, int def) {
  const char* value = StrArg(argc, argv, name, nullptr);
  return value != nullptr ? std::atoi(value) : def;
}

}  // namespace traind::bench

#endif  // TRAIND_BENCH_FLAGS_H_
