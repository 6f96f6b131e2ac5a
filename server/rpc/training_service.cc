#include "server/rpc/training_service.h"

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/spec.h"
#include "server/rpc/auth.h"
#include "server/rpc/status_util.h"

namespace traind::rpc {

using grpc::ServerContext;
using grpc::Status;
using trainer::v1::JobState;

namespace {
constexpr size_t kChunkBytes = 1 << 20;
// Requests other than Classify are small; the server accepts 64 MiB messages
// for Classify's images.
constexpr size_t kMaxRequestBytes = 1 << 20;

Status CheckSize(const google::protobuf::Message& request, const char* rpc) {
  const size_t n = request.ByteSizeLong();
  if (n <= kMaxRequestBytes) return Status::OK;
  return Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                absl::StrCat(rpc, ": request of ", n, " bytes exceeds the ", kMaxRequestBytes,
                             "-byte limit"));
}
constexpr int kEventsPerRead = 512;
}  // namespace

Status TrainingServiceImpl::SubmitJob(ServerContext* context,
                                      const trainer::v1::SubmitJobRequest* request,
                                      trainer::v1::SubmitJobResponse* response) {
  if (Status st = CheckSize(*request, "SubmitJob"); !st.ok()) return st;
  auto caller = Authenticate(*context, tokens_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto id = manager_->Submit(request->spec(), request->request_id(), *caller);
  if (!id.ok()) return ToGrpcStatus(id.status());
  response->set_job_id(*id);
  return Status::OK;
}

Status TrainingServiceImpl::GetJob(ServerContext* context, const trainer::v1::GetJobRequest* request,
                                   trainer::v1::GetJobResponse* response) {
  auto caller = Authenticate(*context, tokens_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto job = manager_->GetJob(request->job_id(), *caller);
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response->mutable_job() = std::move(*job);
  return Status::OK;
}

Status TrainingServiceImpl::ListJobs(ServerContext* context,
                                     const trainer::v1::ListJobsRequest* request,
                                     trainer::v1::ListJobsResponse* response) {
  auto caller = Authenticate(*context, tokens_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  std::vector<JobState> states;
  for (int s : request->states()) states.push_back(static_cast<JobState>(s));
  auto page = manager_->ListJobs(request->page_size(), request->page_token(), states, *caller);
  if (!page.ok()) return ToGrpcStatus(page.status());
  for (auto& j : page->jobs) *response->add_jobs() = std::move(j);
  response->set_next_page_token(page->next_page_token);
  return Status::OK;
}

Status TrainingServiceImpl::CancelJob(ServerContext* context,
                                      const trainer::v1::CancelJobRequest* request,
                                      trainer::v1::CancelJobResponse* response) {
  auto caller = Authenticate(*context, tokens_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto job = manager_->Cancel(request->job_id(), *caller);
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response->mutable_job() = std::move(*job);
  return Status::OK;
}

Status TrainingServiceImpl::StreamMetrics(
    ServerContext* context, const trainer::v1::StreamMetricsRequest* request,
    grpc::ServerWriter<trainer::v1::StreamMetricsResponse>* writer) {
  auto caller = Authenticate(*context, tokens_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  // Open streams per user are limited; the slot is released on return.
  {
    absl::MutexLock lock(&streams_mu_);
    int& open = streams_[caller->user];
    if (open >= limits_.max_streams_per_user) {
      return Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                    absl::StrCat("user ", caller->user, " already has ", open,
                                 " open streams (the limit is ", limits_.max_streams_per_user,
                                 ")"));
    }
    ++open;
  }
  struct Release {
    TrainingServiceImpl* self;
    std::string user;
    ~Release() {
      absl::MutexLock lock(&self->streams_mu_);
      --self->streams_[user];
    }
  } release{this, caller->user};
  const std::string& id = request->job_id();
  int64_t after = request->after_seq();
  const absl::Time cap = absl::Now() + absl::Seconds(limits_.max_stream_seconds);
  while (true) {
    if (absl::Now() >= cap) {
      return Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                    absl::StrCat("stream open for the server's limit of ",
                                 limits_.max_stream_seconds,
                                 " s; reconnect with after_seq=", after, " to continue"));
    }
    auto events = manager_->ReadEvents(id, after, kEventsPerRead, *caller);
    if (!events.ok()) return ToGrpcStatus(events.status());
    for (auto& e : *events) {
      const bool terminal = e.has_state() && IsTerminal(e.state().state());
      after = e.seq();
      trainer::v1::StreamMetricsResponse response;
      *response.mutable_event() = std::move(e);
      if (!writer->Write(response)) {
        return Status(grpc::StatusCode::CANCELLED, "watcher went away");
      }
      if (terminal) return Status::OK;
    }
    if (!events->empty()) continue;
    auto job = manager_->GetJob(id, *caller);
    if (!job.ok()) return ToGrpcStatus(job.status());
    if (IsTerminal(job->state()) && after >= job->last_seq()) return Status::OK;
    if (context->IsCancelled()) {
      return Status(grpc::StatusCode::CANCELLED, "watcher went away");
    }
    if (manager_->shutting_down()) {
      return Status(grpc::StatusCode::UNAVAILABLE,
                    "traind is shutting down; reconnect with after_seq to resume");
    }
    manager_->WaitForEvents(id, after, absl::Milliseconds(250));
  }
}

Status TrainingServiceImpl::GetWeights(
    ServerContext* context, const trainer::v1::GetWeightsRequest* request,
    grpc::ServerWriter<trainer::v1::GetWeightsResponse>* writer) {
  auto caller = Authenticate(*context, tokens_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  if (!trainer::v1::WeightsFormat_IsValid(request->format())) {
    return Status(grpc::StatusCode::INVALID_ARGUMENT, "format: unknown weights format");
  }
  const auto format = request->format() == trainer::v1::WEIGHTS_FORMAT_UNSPECIFIED
                          ? trainer::v1::PTH
                          : request->format();
  if (request->trial() < 0) {
    return Status(grpc::StatusCode::INVALID_ARGUMENT, "trial: must be >= 0");
  }
  auto file = manager_->Weights(request->job_id(), format, request->trial(), *caller);
  if (!file.ok()) return ToGrpcStatus(file.status());
  if (request->offset() < 0 || request->offset() > file->size) {
    return Status(grpc::StatusCode::INVALID_ARGUMENT,
                  absl::StrCat("offset: ", request->offset(), " is outside the file's ",
                               file->size, " bytes"));
  }
  std::ifstream in(file->path, std::ios::binary);
  if (!in) {
    return Status(grpc::StatusCode::DATA_LOSS, absl::StrCat("cannot open ", file->path));
  }
  int64_t offset = request->offset();
  in.seekg(offset);
  trainer::v1::GetWeightsResponse first;
  auto* header = first.mutable_header();
  header->set_total_size(file->size);
  header->set_sha256(file->sha256);
  header->set_format(format);
  if (!writer->Write(first)) return Status(grpc::StatusCode::CANCELLED, "client went away");
  std::string buf(kChunkBytes, '\0');
  const absl::Time cap = absl::Now() + absl::Seconds(limits_.max_stream_seconds);
  while (offset < file->size) {
    if (context->IsCancelled()) return Status(grpc::StatusCode::CANCELLED, "client went away");
    if (absl::Now() >= cap) {
      return Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                    absl::StrCat("download open for the server's limit of ",
                                 limits_.max_stream_seconds, " s at byte ", offset,
                                 "; continue it with offset=", offset));
    }
    const int64_t want = std::min<int64_t>(kChunkBytes, file->size - offset);
    in.read(buf.data(), want);
    if (in.gcount() != want) {
      return Status(grpc::StatusCode::DATA_LOSS,
                    absl::StrCat("weights file ", file->path, " shrank while being sent"));
    }
    trainer::v1::GetWeightsResponse msg;
    msg.set_chunk(buf.data(), static_cast<size_t>(want));
    msg.set_offset(offset);
    if (!writer->Write(msg)) return Status(grpc::StatusCode::CANCELLED, "client went away");
    offset += want;
  }
  return Status::OK;
}

Status TrainingServiceImpl::Classify(ServerContext* context,
                                     const trainer::v1::ClassifyRequest* request,
                                     trainer::v1::ClassifyResponse* response) {
  auto caller = Authenticate(*context, tokens_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto result = manager_->Classify(*request, *caller);
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = std::move(*result);
  return Status::OK;
}

Status TrainingServiceImpl::DeleteJob(ServerContext* context,
                                      const trainer::v1::DeleteJobRequest* request,
                                      trainer::v1::DeleteJobResponse* response) {
  auto caller = Authenticate(*context, tokens_);
  if (!caller.ok()) return ToGrpcStatus(caller.status());
  auto freed = manager_->Delete(request->job_id(), *caller);
  if (!freed.ok()) return ToGrpcStatus(freed.status());
  response->set_freed_bytes(*freed);
  return Status::OK;
}

}  // namespace traind::rpc
