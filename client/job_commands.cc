// submit, watch, status, list, cancel, delete.
#include <cstdio>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/commands.h"
#include "client/flags.h"
#include "client/render.h"
#include "client/spec_flags.h"
#include "common/spec.h"

namespace traind::client {

using Stub = Connection::Stub;

absl::Status Submit(Connection& c) {
  trainer::v1::SubmitJobRequest request;
  auto spec = SpecFromFlags();
  if (!spec.ok()) return spec.status();
  *request.mutable_spec() = *std::move(spec);
  const std::string id = absl::GetFlag(FLAGS_request_id);
  request.set_request_id(id.empty() ? RandomRequestId() : id);
  // Retrying with the same request id is safe: the server returns the same job.
  auto response = c.Call(&Stub::SubmitJob, request, "submit", /*retries=*/4);
  if (!response.ok()) return response.status();
  if (JsonOutput()) {
    PrintJson(*response);
  } else {
    std::printf("submitted %s\n", response->job_id().c_str());
    std::fflush(stdout);
  }
  if (absl::GetFlag(FLAGS_watch)) return Watch(c, response->job_id(), 0);
  return absl::OkStatus();
}

absl::Status Watch(Connection& c, const std::string& id, int64_t after) {
  auto job = c.GetJob(id);
  if (!job.ok()) return job.status();
  auto human = NewHumanRenderer(job->spec().epochs());
  const bool json = JsonOutput();
  trainer::v1::JobState final_state = trainer::v1::JOB_STATE_UNSPECIFIED;
  std::string final_reason;
  absl::Time last_progress = absl::Now();
  absl::Duration backoff = absl::Milliseconds(200);
  while (true) {
    grpc::ClientContext context;
    c.Prepare(&context);
    trainer::v1::StreamMetricsRequest request;
    request.set_job_id(id);
    request.set_after_seq(after);
    auto reader = c.stub().StreamMetrics(&context, request);
    trainer::v1::StreamMetricsResponse response;
    while (reader->Read(&response)) {
      const auto& e = response.event();
      after = e.seq();
      last_progress = absl::Now();
      backoff = absl::Milliseconds(200);
      if (json) {
        PrintJson(e);
      } else {
        human->Render(e);
      }
      if (e.has_state() && IsTerminal(e.state().state())) {
        final_state = e.state().state();
        final_reason = e.state().reason();
      }
    }
    const grpc::Status st = reader->Finish();
    human->EndLine();
    if (st.ok()) break;
    // A daemon going down answers UNAVAILABLE, or CANCELLED for calls that
    // arrive while it stops; this client never cancels its own watch.
    const bool retryable = st.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           st.error_code() == grpc::StatusCode::CANCELLED ||
                           st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                           st.error_code() == grpc::StatusCode::INTERNAL;
    if (!retryable) return RpcError("watch " + id, st);
    if (absl::Now() - last_progress > absl::Seconds(absl::GetFlag(FLAGS_reconnect_seconds))) {
      return RpcError("watch " + id + " (gave up reconnecting)", st);
    }
    std::fprintf(stderr, "trainctl: connection lost (%s); resuming after event %lld\n",
                 st.error_message().c_str(), static_cast<long long>(after));
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff));
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
  if (final_state == trainer::v1::JOB_STATE_UNSPECIFIED || (!json && final_state ==
                                                                       trainer::v1::SUCCEEDED)) {
    job = c.GetJob(id);
    if (!job.ok()) return job.status();
    if (final_state == trainer::v1::JOB_STATE_UNSPECIFIED) final_state = job->state();
  }
  if (final_state != trainer::v1::SUCCEEDED) {
    return JobEndedError(absl::StrCat("job ", id, " ended ", StateName(final_state),
                                      final_reason.empty() ? "" : ": ", final_reason));
  }
  if (!json) {
    std::printf("%s SUCCEEDED: val loss %.4f, val acc %s. Weights: trainctl weights %s -o %s.pth\n",
                id.c_str(), job->latest().validation_loss(),
                Pct(job->latest().validation_accuracy()).c_str(), id.c_str(), id.c_str());
  }
  return absl::OkStatus();
}

absl::Status Status(Connection& c, const std::string& id) {
  auto job = c.GetJob(id);
  if (!job.ok()) return job.status();
  if (JsonOutput()) {
    PrintJson(*job);
  } else {
    PrintJob(*job);
  }
  return absl::OkStatus();
}

absl::Status List(Connection& c) {
  trainer::v1::ListJobsRequest request;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_state), ',', absl::SkipEmpty())) {
    trainer::v1::JobState state;
    if (!trainer::v1::JobState_Parse(absl::AsciiStrToUpper(s), &state)) {
      return UsageError(absl::StrCat("--state: unknown state ", s));
    }
    request.add_states(state);
  }
  const int limit = absl::GetFlag(FLAGS_limit);
  std::vector<trainer::v1::Job> jobs;
  do {
    auto page = c.Call(&Stub::ListJobs, request, "list");
    if (!page.ok()) return page.status();
    for (auto& j : *page->mutable_jobs()) jobs.push_back(std::move(j));
    request.set_page_token(page->next_page_token());
  } while (!request.page_token().empty() && (limit <= 0 || static_cast<int>(jobs.size()) < limit));
  if (limit > 0 && static_cast<int>(jobs.size()) > limit) jobs.resize(limit);
  if (JsonOutput()) {
    trainer::v1::ListJobsResponse all;
    for (auto& j : jobs) *all.add_jobs() = j;
    PrintJson(all);
  } else {
    PrintJobTable(jobs);
  }
  return absl::OkStatus();
}

absl::Status Cancel(Connection& c, const std::string& id) {
  trainer::v1::CancelJobRequest request;
  request.set_job_id(id);
  auto response = c.Call(&Stub::CancelJob, request, "cancel " + id);
  if (!response.ok()) return response.status();
  if (JsonOutput()) {
    PrintJson(response->job());
  } else {
    std::printf("%s: %s\n", id.c_str(), StateName(response->job().state()).c_str());
  }
  return absl::OkStatus();
}

namespace {

// The job after a call that changed it: its state and, while it waits, why.
void PrintChanged(const std::string& id, const trainer::v1::Job& job) {
  if (JsonOutput()) {
    PrintJson(job);
    return;
  }
  std::printf("%s: %s (priority %s)%s%s\n", id.c_str(), StateName(job.state()).c_str(),
              trainer::v1::Priority_Name(job.spec().priority()).c_str(),
              job.waiting_reason().empty() ? "" : "; ", job.waiting_reason().c_str());
}

}  // namespace

absl::Status Pause(Connection& c, const std::string& id) {
  trainer::v1::PauseJobRequest request;
  request.set_job_id(id);
  auto response = c.Call(&Stub::PauseJob, request, "pause " + id);
  if (!response.ok()) return response.status();
  PrintChanged(id, response->job());
  return absl::OkStatus();
}

absl::Status Resume(Connection& c, const std::string& id) {
  trainer::v1::ResumeJobRequest request;
  request.set_job_id(id);
  auto response = c.Call(&Stub::ResumeJob, request, "resume " + id);
  if (!response.ok()) return response.status();
  PrintChanged(id, response->job());
  return absl::OkStatus();
}

absl::Status SetPriority(Connection& c, const std::string& id, const std::string& priority) {
  trainer::v1::Priority p;
  if (!trainer::v1::Priority_Parse(absl::AsciiStrToUpper(priority), &p) ||
      p == trainer::v1::PRIORITY_UNSPECIFIED) {
    return UsageError(absl::StrCat("priority: \"", priority,
                                   "\" is not a priority; use low, normal, high or urgent"));
  }
  trainer::v1::SetJobPriorityRequest request;
  request.set_job_id(id);
  request.set_priority(p);
  auto response = c.Call(&Stub::SetJobPriority, request, "priority " + id);
  if (!response.ok()) return response.status();
  PrintChanged(id, response->job());
  return absl::OkStatus();
}

absl::Status Delete(Connection& c, const std::string& id) {
  trainer::v1::DeleteJobRequest request;
  request.set_job_id(id);
  auto response = c.Call(&Stub::DeleteJob, request, "delete " + id);
  if (!response.ok()) return response.status();
  if (JsonOutput()) {
    PrintJson(nlohmann::json{{"job_id", id}, {"freed_bytes", response->freed_bytes()}});
  } else {
    std::printf("deleted %s (%.1f MB freed)\n", id.c_str(), response->freed_bytes() / 1e6);
  }
  return absl::OkStatus();
}

}  // namespace traind::client
