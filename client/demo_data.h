// A small procedurally drawn dataset (one folder per class) so that traind
// can be tried without downloading anything.
#ifndef TRAIND_CLIENT_DEMO_DATA_H_
#define TRAIND_CLIENT_DEMO_DATA_H_

#include <string>

#include "absl/status/status.h"

namespace traind::client {

// Writes `per_class` JPEG images of each shape class (circle, cross, square,
// triangle, ...) under `dir`/<class>/, deterministic for a given seed.
absl::Status MakeDemoDataset(const std::string& dir, int classes, int per_class,
                             unsigned seed);

}  // namespace traind::client

#endif  // TRAIND_CLIENT_DEMO_DATA_H_
