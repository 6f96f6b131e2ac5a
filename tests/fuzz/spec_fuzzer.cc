// libFuzzer: a job file (JSON) through the parser, the defaults and the
// validator, as SubmitJob and `trainctl submit -f` take it. Must never crash;
// every refusal must name a field.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <google/protobuf/util/json_util.h>

#include "common/spec.h"
#include "trainer/v1/training_service.pb.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  trainer::v1::JobSpec spec;
  const std::string json(reinterpret_cast<const char*>(data), size);
  if (!google::protobuf::util::JsonStringToMessage(json, &spec).ok()) return 0;
  traind::ApplyDefaults(&spec);
  const absl::Status st = traind::ValidateSpec(spec);
  if (!st.ok() && std::string(st.message()).find(':') == std::string::npos) {
    std::abort();  // a refusal that names no field
  }
  return 0;
}
