// How trainctl shows things: to people (tables, progress bars, summary
// lines) or as JSON, one object per line (protobuf's JSON mapping for
// messages, nlohmann::json for the rest).
#ifndef TRAIND_CLIENT_RENDER_H_
#define TRAIND_CLIENT_RENDER_H_

#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/message.h>
#include <nlohmann/json.hpp>

#include "trainer/v1/training_service.pb.h"

namespace traind::client {

// --output=json.
bool JsonOutput();
// A message in protobuf's JSON mapping, proto field names.
std::string ToJson(const google::protobuf::Message& message);
// One JSON object on its own line.
void PrintJson(const google::protobuf::Message& message);
void PrintJson(const nlohmann::json& value);

std::string StateName(trainer::v1::JobState state);
std::string KindName(trainer::v1::JobKind kind);
std::string Pct(double share);
// "3/5 epochs", or a sweep's "4/6 trials"; "-" before there is any.
std::string Progress(const trainer::v1::Job& job);

// A job's event stream for people: a live progress bar on a terminal, plain
// lines otherwise.
class EventRenderer {
 public:
  virtual ~EventRenderer() = default;
  virtual void Render(const trainer::v1::JobEvent& event) = 0;
  // Ends a progress bar's line, if one is open.
  virtual void EndLine() = 0;
};
std::unique_ptr<EventRenderer> NewHumanRenderer(int epochs);

// `trainctl status`: the job, and a sweep's ranked trials.
void PrintJob(const trainer::v1::Job& job);
// `trainctl list`: one line per job.
void PrintJobTable(const std::vector<trainer::v1::Job>& jobs);

}  // namespace traind::client

#endif  // TRAIND_CLIENT_RENDER_H_
