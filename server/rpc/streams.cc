#include "server/rpc/streams.h"

#include <deque>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/rpc/status_util.h"

namespace traind::rpc {
namespace {

using trainer::v1::GetWeightsResponse;
using trainer::v1::StreamMetricsResponse;

constexpr int kEventsPerRead = 256;

// Owned by itself (self_) until OnDone; the follower's wake-ups hold it only
// weakly, so a late wake-up after the end finds nothing to do.
class MetricsStream final : public grpc::ServerWriteReactor<StreamMetricsResponse> {
 public:
  explicit MetricsStream(absl::Duration max_open)
      : max_open_(max_open), deadline_(absl::Now() + max_open) {}

  static MetricsStream* Start(jobs::JobManager* manager, const TokenStore* tokens,
                              absl::Duration max_open, grpc::CallbackServerContext* context,
                              const trainer::v1::StreamMetricsRequest* request) {
    auto stream = std::make_shared<MetricsStream>(max_open);
    stream->self_ = stream;
    auto caller = Authenticate(*context, tokens);
    if (!caller.ok()) {
      stream->End(ToGrpcStatus(caller.status()));
      return stream.get();
    }
    std::weak_ptr<MetricsStream> weak = stream;
    auto follower = manager->Follow(request->job_id(), request->after_seq(), *caller, [weak] {
      if (auto s = weak.lock()) s->Pump();
    });
    if (!follower.ok()) {
      stream->End(ToGrpcStatus(follower.status()));
      return stream.get();
    }
    {
      absl::MutexLock lock(&stream->mu_);
      stream->follower_ = std::move(*follower);
    }
    stream->Pump();
    return stream.get();
  }

  // Writes the next event, finishes, or waits for a wake-up.
  void Pump() {
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || writing_ || !follower_) return;
      if (pending_.empty() && !end_) {
        if (absl::Now() >= deadline_) {
          finish = grpc::Status(
              grpc::StatusCode::DEADLINE_EXCEEDED,
              absl::StrCat("stream open for the server's limit of ",
                           absl::ToInt64Seconds(max_open_), " s; reconnect with after_seq=",
                           follower_->cursor(), " to continue"));
        } else if (auto step = follower_->Next(kEventsPerRead); !step.ok()) {
          finish = ToGrpcStatus(step.status());
        } else {
          pending_.assign(step->events.begin(), step->events.end());
          end_ = step->end;
        }
      }
      if (!finish && !pending_.empty()) {
        *response_.mutable_event() = std::move(pending_.front());
        pending_.pop_front();
        writing_ = true;
      } else if (!finish && end_) {
        finish = grpc::Status::OK;
      } else if (!finish) {
        return;  // nothing yet
      }
      if (finish) finished_ = true;
    }
    if (finish) {
      Finish(*finish);
    } else {
      StartWrite(&response_);
    }
  }

  void OnWriteDone(bool ok) override {
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      stop = !ok || cancelled_;
      if (stop) {
        if (finished_) return;
        finished_ = true;
      }
    }
    if (stop) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "watcher went away"));
      return;
    }
    Pump();
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      // A write in flight completes (not ok) and finishes the call.
      if (finished_ || writing_) return;
      finished_ = true;
    }
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "watcher went away"));
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&mu_);
      follower_.reset();  // unsubscribes and frees the stream slot
    }
    auto last_reference = std::move(self_);
  }

 private:
  void End(grpc::Status status) {
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
    }
    Finish(std::move(status));
  }

  const absl::Duration max_open_;
  const absl::Time deadline_;
  std::shared_ptr<MetricsStream> self_;
  absl::Mutex mu_;
  std::unique_ptr<jobs::EventFollower> follower_ ABSL_GUARDED_BY(mu_);
  std::deque<trainer::v1::JobEvent> pending_ ABSL_GUARDED_BY(mu_);
  bool end_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  StreamMetricsResponse response_;  // the write in flight
};

// One write in flight from the header to the last chunk; each completed
// write starts the next, so nothing else wakes it.
class WeightsStream final : public grpc::ServerWriteReactor<GetWeightsResponse> {
 public:
  WeightsStream(jobs::JobManager* manager, const TokenStore* tokens, absl::Duration max_open,
                grpc::CallbackServerContext* context,
                const trainer::v1::GetWeightsRequest* request)
      : max_open_(max_open), deadline_(absl::Now() + max_open) {
    auto caller = Authenticate(*context, tokens);
    if (!caller.ok()) {
      Finish(ToGrpcStatus(caller.status()));
      return;
    }
    auto reader = manager->OpenWeights(request->job_id(), request->format(), request->trial(),
                                       request->offset(), *caller);
    if (!reader.ok()) {
      Finish(ToGrpcStatus(reader.status()));
      return;
    }
    reader_ = std::move(*reader);
    *response_.mutable_header() = reader_->header();
    StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
    if (reader_->done()) return Finish(grpc::Status::OK);
    if (absl::Now() >= deadline_) {
      return Finish(grpc::Status(
          grpc::StatusCode::DEADLINE_EXCEEDED,
          absl::StrCat("download open for the server's limit of ",
                       absl::ToInt64Seconds(max_open_), " s at byte ", reader_->offset(),
                       "; continue it with offset=", reader_->offset())));
    }
    const int64_t offset = reader_->offset();
    auto chunk = reader_->Next();
    if (!chunk.ok()) return Finish(ToGrpcStatus(chunk.status()));
    response_.Clear();
    response_.set_chunk(std::move(*chunk));
    response_.set_offset(offset);
    StartWrite(&response_);
  }

  void OnDone() override { delete this; }

 private:
  const absl::Duration max_open_;
  const absl::Time deadline_;
  std::unique_ptr<jobs::WeightsReader> reader_;
  GetWeightsResponse response_;  // the write in flight
};

}  // namespace

grpc::ServerWriteReactor<StreamMetricsResponse>* StartMetricsStream(
    jobs::JobManager* manager, const TokenStore* tokens, absl::Duration max_open,
    grpc::CallbackServerContext* context, const trainer::v1::StreamMetricsRequest* request) {
  return MetricsStream::Start(manager, tokens, max_open, context, request);
}

grpc::ServerWriteReactor<GetWeightsResponse>* StartWeightsStream(
    jobs::JobManager* manager, const TokenStore* tokens, absl::Duration max_open,
    grpc::CallbackServerContext* context, const trainer::v1::GetWeightsRequest* request) {
  return new WeightsStream(manager, tokens, max_open, context, request);
}

}  // namespace traind::rpc
