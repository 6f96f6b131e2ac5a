#include "client/trainctl.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <opencv2/imgcodecs.hpp>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/charts.h"
#include "client/demo_data.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/spec.h"
#include "trainer/v1/training_service.grpc.pb.h"

ABSL_FLAG(std::string, server, "",
          "traind address host:port (default $TRAINCTL_SERVER, else 127.0.0.1:50051)");
ABSL_FLAG(std::string, output, "human", "human or json");
ABSL_FLAG(std::string, token, "", "bearer token (or $TRAINCTL_TOKEN)");
ABSL_FLAG(std::string, tls_ca, "", "TLS: CA certificate to verify traind with (or $TRAINCTL_TLS_CA)");
ABSL_FLAG(std::string, tls_cert, "",
          "mutual TLS: client certificate (or $TRAINCTL_TLS_CERT)");
ABSL_FLAG(std::string, tls_key, "", "mutual TLS: client key (or $TRAINCTL_TLS_KEY)");
// submit
ABSL_FLAG(std::string, f, "", "submit: read the JobSpec from this JSON file");
ABSL_FLAG(std::string, kind, "", "submit: finetune, scratch or sweep (default finetune)");
ABSL_FLAG(std::string, dataset, "", "submit: dataset folder name under the data root");
ABSL_FLAG(std::string, epochs, "", "submit: epochs (default 5)");
ABSL_FLAG(std::string, batch_size, "", "submit: images per batch (default 32)");
ABSL_FLAG(std::string, image_size, "", "submit: image side in pixels (default 128)");
ABSL_FLAG(std::string, lr, "", "submit: classifier (or scratch) learning rate (default 1e-3)");
ABSL_FLAG(std::string, backbone_lr, "", "submit: trainable-block learning rate (default 1e-4)");
ABSL_FLAG(std::string, train_fraction, "", "submit: share of images trained on (default 0.8)");
ABSL_FLAG(std::string, seed, "", "submit: seed (default 0)");
ABSL_FLAG(std::string, trainable, "", "submit: comma-separated blocks (default layer3,layer4)");
ABSL_FLAG(std::string, device, "", "submit: auto, cpu or cuda (default auto)");
ABSL_FLAG(std::string, threads, "", "submit: intra-op threads (default: the daemon's)");
ABSL_FLAG(std::string, loader_threads, "", "submit: image-loading threads (default 2)");
ABSL_FLAG(std::string, precision, "", "submit: fp32 or bf16 (default fp32)");
ABSL_FLAG(std::string, pretrained, "", "submit: starting weights file under the weights root");
ABSL_FLAG(std::string, from_job, "", "submit: start from this finished job's weights");
ABSL_FLAG(bool, augment_validation, false, "submit: augment validation images too");
ABSL_FLAG(std::string, request_id, "", "submit: idempotency key (default: random)");
ABSL_FLAG(bool, watch, false, "submit: follow the job after submitting");
// watch
ABSL_FLAG(int64_t, after, 0, "watch: start after this sequence number");
ABSL_FLAG(int, reconnect_seconds, 300, "watch: give up reconnecting after this long");
// list
ABSL_FLAG(std::string, state, "", "list: only jobs in these states (comma-separated)");
ABSL_FLAG(int, limit, 0, "list: at most this many jobs (0: all)");
// weights
ABSL_FLAG(std::string, o, "", "weights, plot: output file");
ABSL_FLAG(std::string, format, "pth", "weights: pth or safetensors");
ABSL_FLAG(int, trial, 0, "weights: this sweep trial's weights (default: the best trial's)");
ABSL_FLAG(int, top, 5, "classify: classes shown per image");
ABSL_FLAG(std::string, confusion, "", "report: also draw the confusion matrix into this PNG");
// demo-data
ABSL_FLAG(int, classes, 4, "demo-data: number of shape classes (2-6)");
ABSL_FLAG(int, per_class, 40, "demo-data: images per class");

namespace traind::client {
namespace {

using trainer::v1::TrainingService;

// An error already explained to the user; carries the exit code.
struct Failure {
  int code;
};

bool JsonOutput() { return absl::GetFlag(FLAGS_output) == "json"; }

[[noreturn]] void Fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "trainctl: %s\n", message.c_str());
  throw Failure{code};
}

[[noreturn]] void FailRpc(const std::string& what, const grpc::Status& st) {
  const int code = st.error_code() == grpc::StatusCode::UNAVAILABLE ? 3 : 2;
  std::string msg = st.error_message();
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
    msg = absl::StrCat("cannot reach traind: ", msg);
  }
  Fail(absl::StrCat(what, ": ", msg), code);
}

std::string ServerAddress() {
  std::string s = absl::GetFlag(FLAGS_server);
  if (s.empty()) {
    const char* env = std::getenv("TRAINCTL_SERVER");
    s = env && *env ? env : "127.0.0.1:50051";
  }
  return s;
}

// A flag, else its environment variable.
std::string Setting(const absl::Flag<std::string>& flag, const char* env) {
  std::string v = absl::GetFlag(flag);
  if (v.empty()) {
    const char* e = std::getenv(env);
    if (e) v = e;
  }
  return v;
}

std::string ReadPem(const std::string& path, const char* what) {
  auto pem = ReadFile(path);
  if (!pem.ok()) Fail(absl::StrCat(what, ": ", pem.status().message()));
  return *pem;
}

std::unique_ptr<TrainingService::Stub> Connect() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  const std::string ca = Setting(FLAGS_tls_ca, "TRAINCTL_TLS_CA");
  const std::string cert = Setting(FLAGS_tls_cert, "TRAINCTL_TLS_CERT");
  const std::string key = Setting(FLAGS_tls_key, "TRAINCTL_TLS_KEY");
  if (!ca.empty() || !cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!ca.empty()) ssl.pem_root_certs = ReadPem(ca, "--tls-ca");
    if (!cert.empty()) {
      if (key.empty()) Fail("--tls-cert needs --tls-key");
      ssl.pem_cert_chain = ReadPem(cert, "--tls-cert");
      ssl.pem_private_key = ReadPem(key, "--tls-key");
    }
    credentials = grpc::SslCredentials(ssl);
  }
  return TrainingService::NewStub(grpc::CreateCustomChannel(ServerAddress(), credentials, args));
}

// Adds the bearer token, if one is set, to a call.
void Authorize(grpc::ClientContext* ctx) {
  static const std::string token = Setting(FLAGS_token, "TRAINCTL_TOKEN");
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, opts);
  return out;
}

std::string State(trainer::v1::JobState s) { return trainer::v1::JobState_Name(s); }

std::string Pct(double v) { return absl::StrFormat("%.2f%%", 100.0 * v); }

std::string Duration(double seconds) {
  if (seconds < 0 || !std::isfinite(seconds)) return "?";
  const int s = static_cast<int>(seconds + 0.5);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

// Every unary call gets the same deadline; streams have none.
void SetUnaryDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
}

std::string Kind(trainer::v1::JobKind k) { return absl::AsciiStrToLower(trainer::v1::JobKind_Name(k)); }

trainer::v1::Job GetJobOrFail(TrainingService::Stub& stub, const std::string& id) {
  grpc::ClientContext ctx;
  Authorize(&ctx);
  SetUnaryDeadline(&ctx);
  trainer::v1::GetJobRequest req;
  req.set_job_id(id);
  trainer::v1::GetJobResponse resp;
  grpc::Status st = stub.GetJob(&ctx, req, &resp);
  if (!st.ok()) FailRpc("status " + id, st);
  return resp.job();
}

template <typename T>
void ParseFlag(const std::string& name, const std::string& value, T* out) {
  if constexpr (std::is_floating_point_v<T>) {
    double v;
    if (!absl::SimpleAtod(value, &v)) Fail(absl::StrCat("--", name, ": not a number: ", value));
    *out = v;
  } else {
    int64_t v;
    if (!absl::SimpleAtoi(value, &v)) Fail(absl::StrCat("--", name, ": not an integer: ", value));
    *out = static_cast<T>(v);
  }
}

trainer::v1::JobSpec SpecFromFlags() {
  trainer::v1::JobSpec spec;
  if (const std::string f = absl::GetFlag(FLAGS_f); !f.empty()) {
    auto text = ReadFile(f);
    if (!text.ok()) Fail(std::string(text.status().message()));
    auto st = google::protobuf::util::JsonStringToMessage(*text, &spec);
    if (!st.ok()) Fail(absl::StrCat(f, ": not a valid JobSpec: ", st.message().as_string()));
  }
  if (const std::string k = absl::AsciiStrToUpper(absl::GetFlag(FLAGS_kind)); !k.empty()) {
    trainer::v1::JobKind kind;
    if (!trainer::v1::JobKind_Parse(k, &kind) || kind == trainer::v1::JOB_KIND_UNSPECIFIED) {
      Fail("--kind: must be finetune, scratch or sweep");
    }
    spec.set_kind(kind);
  }
  if (auto v = absl::GetFlag(FLAGS_dataset); !v.empty()) spec.set_dataset(v);
  auto set_int = [](const std::string& name, const std::string& v, auto setter) {
    if (v.empty()) return;
    int64_t x;
    ParseFlag(name, v, &x);
    if (x < INT32_MIN || x > INT32_MAX) Fail(absl::StrCat("--", name, ": out of range"));
    setter(static_cast<int32_t>(x));
  };
  auto set_double = [](const std::string& name, const std::string& v, auto setter) {
    if (v.empty()) return;
    double x;
    ParseFlag(name, v, &x);
    setter(x);
  };
  set_int("epochs", absl::GetFlag(FLAGS_epochs), [&](int32_t v) { spec.set_epochs(v); });
  set_int("batch_size", absl::GetFlag(FLAGS_batch_size), [&](int32_t v) { spec.set_batch_size(v); });
  set_int("image_size", absl::GetFlag(FLAGS_image_size), [&](int32_t v) { spec.set_image_size(v); });
  set_int("threads", absl::GetFlag(FLAGS_threads), [&](int32_t v) { spec.set_threads(v); });
  set_int("loader_threads", absl::GetFlag(FLAGS_loader_threads),
          [&](int32_t v) { spec.set_loader_threads(v); });
  set_double("lr", absl::GetFlag(FLAGS_lr), [&](double v) { spec.set_learning_rate(v); });
  set_double("backbone_lr", absl::GetFlag(FLAGS_backbone_lr),
             [&](double v) { spec.set_backbone_learning_rate(v); });
  set_double("train_fraction", absl::GetFlag(FLAGS_train_fraction),
             [&](double v) { spec.set_train_fraction(v); });
  if (auto v = absl::GetFlag(FLAGS_seed); !v.empty()) {
    uint64_t seed;
    if (!absl::SimpleAtoi(v, &seed)) Fail("--seed: not a non-negative integer: " + v);
    spec.set_seed(seed);
  }
  if (auto v = absl::GetFlag(FLAGS_trainable); !v.empty()) {
    spec.clear_trainable_blocks();
    for (absl::string_view b : absl::StrSplit(v, ',', absl::SkipEmpty())) {
      spec.add_trainable_blocks(std::string(b));
    }
  }
  if (auto v = absl::GetFlag(FLAGS_device); !v.empty()) spec.set_device(v);
  if (auto v = absl::GetFlag(FLAGS_precision); !v.empty()) spec.set_precision(v);
  if (auto v = absl::GetFlag(FLAGS_pretrained); !v.empty()) spec.set_pretrained_file(v);
  if (auto v = absl::GetFlag(FLAGS_from_job); !v.empty()) spec.set_from_job(v);
  if (absl::GetFlag(FLAGS_augment_validation)) spec.set_augment_validation(true);
  return spec;
}

std::string RandomRequestId() {
  std::random_device rd;
  return absl::StrFormat("trainctl-%08x%08x", rd(), rd());
}

// Renders a job's event stream for people: a live progress bar on a
// terminal, plain lines otherwise.
class HumanRenderer {
 public:
  explicit HumanRenderer(int epochs) : epochs_(epochs), tty_(isatty(STDOUT_FILENO)) {}

  void Render(const trainer::v1::JobEvent& e) {
    switch (e.event_case()) {
      case trainer::v1::JobEvent::kBatch:
        Batch(e.batch());
        break;
      case trainer::v1::JobEvent::kEpoch:
        EndLine();
        Epoch(e.epoch());
        break;
      case trainer::v1::JobEvent::kState:
        EndLine();
        std::printf("[%s]%s%s\n", State(e.state().state()).c_str(),
                    e.state().reason().empty() ? "" : " ", e.state().reason().c_str());
        break;
      case trainer::v1::JobEvent::kLog:
        EndLine();
        std::printf("%s%s\n",
                    e.log().level() == trainer::v1::LogMessage::WARNING ? "warning: " : "",
                    e.log().text().c_str());
        break;
      case trainer::v1::JobEvent::kTrialStarted: {
        EndLine();
        const auto& t = e.trial_started();
        trial_epochs_ = t.epochs();
        std::vector<std::string> settings;
        for (const auto& st : t.settings()) {
          if (st.name() != "epochs" && st.name() != "learning_rate" &&
              st.name() != "backbone_learning_rate") {
            settings.push_back(absl::StrFormat("%s %g", st.name(), st.value()));
          }
        }
        std::printf("trial %d: %d epoch(s), lr %g, backbone lr %g%s%s%s\n", t.trial(),
                    t.epochs(), t.learning_rate(), t.backbone_learning_rate(),
                    settings.empty() ? "" : ", ", absl::StrJoin(settings, ", ").c_str(),
                    t.run() != 0 && t.run() != t.trial()
                        ? absl::StrCat(" (read from trial ", t.run(), "'s run)").c_str()
                        : "");
        break;
      }
      case trainer::v1::JobEvent::kResumed: {
        EndLine();
        const auto& r = e.resumed();
        if (r.checkpoint_sha256().empty()) {
          std::printf("attempt %d: no checkpoint to continue from; starting over\n",
                      r.attempt());
        } else {
          std::printf("attempt %d: resumed from epoch %d%s (checkpoint sha256 %.12s..., "
                      "verified)\n",
                      r.attempt(), r.epoch(),
                      r.next_batch() > 0 ? absl::StrCat(", batch ", r.next_batch()).c_str() : "",
                      r.checkpoint_sha256().c_str());
        }
        break;
      }
      case trainer::v1::JobEvent::kTrialFinished: {
        EndLine();
        const auto& r = e.trial_finished().result();
        std::printf("trial %d done after %d epoch(s): val loss %.4f, val acc %s%s%s\n",
                    r.trial(), r.epochs_run(), r.final().validation_loss(),
                    Pct(r.final().validation_accuracy()).c_str(),
                    r.stopped().empty() ? "" : "; ", r.stopped().c_str());
        // The live ranking so far, best validation loss first.
        finished_.push_back(r);
        std::stable_sort(finished_.begin(), finished_.end(), [](const auto& a, const auto& b) {
          return a.final().validation_loss() < b.final().validation_loss();
        });
        std::vector<std::string> ranking;
        for (size_t i = 0; i < finished_.size() && i < 5; ++i) {
          ranking.push_back(absl::StrFormat("#%d trial %d (%.4f)", i + 1, finished_[i].trial(),
                                            finished_[i].final().validation_loss()));
        }
        std::printf("  ranking: %s%s\n", absl::StrJoin(ranking, ", ").c_str(),
                    finished_.size() > 5 ? ", ..." : "");
        break;
      }
      default:
        break;
    }
    std::fflush(stdout);
  }

  void EndLine() {
    if (open_line_) std::printf("\n");
    open_line_ = false;
  }

 private:
  void Batch(const trainer::v1::BatchMetrics& b) {
    if (b.epoch() != epoch_ || b.batch() == 0) {
      epoch_ = b.epoch();
      loss_sum_ = 0;
      count_ = 0;
      epoch_start_ = absl::Now();
    }
    loss_sum_ += b.loss();
    ++count_;
    const int done = b.batch() + 1;
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - epoch_start_);
    const double eta = done > 0 ? elapsed / done * (b.batches() - done) : -1;
    const int total_epochs = trial_epochs_ > 0 ? trial_epochs_ : epochs_;
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = b.batches() > 0 ? kWidth * done / b.batches() : 0;
      std::printf("\repoch %d/%d [%s%s] %d/%d loss %.4f (avg %.4f) %.0f img/s ETA %s  ",
                  b.epoch(), total_epochs, std::string(filled, '#').c_str(),
                  std::string(kWidth - filled, '.').c_str(), done, b.batches(), b.loss(),
                  loss_sum_ / count_, b.images_per_second(), Duration(eta).c_str());
      open_line_ = true;
    } else {
      // About ten lines per epoch when nobody sees a live bar.
      const int every = std::max(1, b.batches() / 10);
      if (done % every == 0 || done == b.batches()) {
        std::printf("epoch %d/%d batch %d/%d loss %.4f (avg %.4f) %.0f img/s\n", b.epoch(),
                    total_epochs, done, b.batches(), b.loss(), loss_sum_ / count_,
                    b.images_per_second());
      }
    }
  }

  void Epoch(const trainer::v1::EpochMetrics& m) {
    const int total_epochs = trial_epochs_ > 0 ? trial_epochs_ : epochs_;
    std::printf(
        "epoch %d/%d: train loss %.4f acc %s | val loss %.4f acc %s | %.1f s, %.1f img/s\n",
        m.epoch(), total_epochs, m.train_loss(), Pct(m.train_accuracy()).c_str(),
        m.validation_loss(), Pct(m.validation_accuracy()).c_str(), m.seconds(),
        m.images_per_second());
  }

  const int epochs_;
  const bool tty_;
  bool open_line_ = false;
  int trial_epochs_ = 0;
  std::vector<trainer::v1::TrialResult> finished_;
  int epoch_ = 0;
  double loss_sum_ = 0;
  int count_ = 0;
  absl::Time epoch_start_;
};

// Follows a job to its end, reconnecting after a dropped connection from the
// last sequence number printed. Returns the exit code.
int Watch(TrainingService::Stub& stub, const std::string& id, int64_t after) {
  const trainer::v1::Job job = GetJobOrFail(stub, id);
  HumanRenderer human(job.spec().epochs());
  const bool json = JsonOutput();
  trainer::v1::JobState final_state = trainer::v1::JOB_STATE_UNSPECIFIED;
  std::string final_reason;
  absl::Time last_progress = absl::Now();
  absl::Duration backoff = absl::Milliseconds(200);
  while (true) {
    grpc::ClientContext ctx;
    Authorize(&ctx);
    trainer::v1::StreamMetricsRequest req;
    req.set_job_id(id);
    req.set_after_seq(after);
    auto reader = stub.StreamMetrics(&ctx, req);
    trainer::v1::StreamMetricsResponse resp;
    while (reader->Read(&resp)) {
      const auto& e = resp.event();
      after = e.seq();
      last_progress = absl::Now();
      backoff = absl::Milliseconds(200);
      if (json) {
        std::printf("%s\n", ToJson(e).c_str());
        std::fflush(stdout);
      } else {
        human.Render(e);
      }
      if (e.has_state() && IsTerminal(e.state().state())) {
        final_state = e.state().state();
        final_reason = e.state().reason();
      }
    }
    grpc::Status st = reader->Finish();
    if (st.ok()) break;
    // A daemon going down answers UNAVAILABLE, or CANCELLED for calls that
    // arrive while it stops; this client never cancels its own watch.
    const bool retryable = st.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           st.error_code() == grpc::StatusCode::CANCELLED ||
                           st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                           st.error_code() == grpc::StatusCode::INTERNAL;
    if (!retryable) {
      human.EndLine();
      FailRpc("watch " + id, st);
    }
    if (absl::Now() - last_progress > absl::Seconds(absl::GetFlag(FLAGS_reconnect_seconds))) {
      human.EndLine();
      FailRpc("watch " + id + " (gave up reconnecting)", st);
    }
    human.EndLine();
    std::fprintf(stderr, "trainctl: connection lost (%s); resuming after event %lld\n",
                 st.error_message().c_str(), static_cast<long long>(after));
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff));
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
  human.EndLine();
  if (final_state == trainer::v1::JOB_STATE_UNSPECIFIED) {
    final_state = GetJobOrFail(stub, id).state();
  }
  if (!json) {
    if (final_state == trainer::v1::SUCCEEDED) {
      const trainer::v1::Job done = GetJobOrFail(stub, id);
      std::printf("%s SUCCEEDED: val loss %.4f, val acc %s. Weights: trainctl weights %s -o %s.pth\n",
                  id.c_str(), done.latest().validation_loss(),
                  Pct(done.latest().validation_accuracy()).c_str(), id.c_str(), id.c_str());
    }
  }
  if (final_state != trainer::v1::SUCCEEDED) {
    Fail(absl::StrCat("job ", id, " ended ", State(final_state),
                      final_reason.empty() ? "" : ": ", final_reason),
         4);
  }
  return 0;
}

int Submit(TrainingService::Stub& stub) {
  trainer::v1::SubmitJobRequest req;
  *req.mutable_spec() = SpecFromFlags();
  req.set_request_id(absl::GetFlag(FLAGS_request_id).empty() ? RandomRequestId()
                                                             : absl::GetFlag(FLAGS_request_id));
  trainer::v1::SubmitJobResponse resp;
  grpc::Status st;
  // Retrying with the same request id is safe: the server returns the same job.
  for (int attempt = 0; attempt < 5; ++attempt) {
    grpc::ClientContext ctx;
    Authorize(&ctx);
    SetUnaryDeadline(&ctx);
    st = stub.SubmitJob(&ctx, req, &resp);
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200 << attempt));
  }
  if (!st.ok()) FailRpc("submit", st);
  if (JsonOutput()) {
    std::printf("%s\n", ToJson(resp).c_str());
  } else {
    std::printf("submitted %s\n", resp.job_id().c_str());
  }
  std::fflush(stdout);
  if (absl::GetFlag(FLAGS_watch)) return Watch(stub, resp.job_id(), 0);
  return 0;
}

void PrintJob(const trainer::v1::Job& j) {
  std::printf("job        %s\n", j.id().c_str());
  std::printf("kind       %s\n", Kind(j.spec().kind()).c_str());
  std::printf("state      %s%s%s\n", State(j.state()).c_str(), j.error().empty() ? "" : ": ",
              j.error().c_str());
  std::printf("dataset    %s (%d classes, %d train / %d validation images)\n",
              j.spec().dataset().c_str(), j.num_classes(), j.train_images(),
              j.validation_images());
  std::printf("settings   %d epochs, batch %d, %dpx, lr %g, backbone lr %g, seed %llu\n",
              j.spec().epochs(), j.spec().batch_size(), j.spec().image_size(),
              j.spec().learning_rate(), j.spec().backbone_learning_rate(),
              static_cast<unsigned long long>(j.spec().seed()));
  if (j.spec().has_pretrained_file()) {
    std::printf("starts     %s\n", j.spec().pretrained_file().c_str());
  } else if (j.spec().has_from_job()) {
    std::printf("starts     weights of %s\n", j.spec().from_job().c_str());
  }
  if (j.has_latest()) {
    const auto& m = j.latest();
    std::printf("epoch %-4d train loss %.4f acc %s | val loss %.4f acc %s | %.1f s\n", m.epoch(),
                m.train_loss(), Pct(m.train_accuracy()).c_str(), m.validation_loss(),
                Pct(m.validation_accuracy()).c_str(), m.seconds());
  }
  if (!j.weights_sha256().empty()) {
    std::printf("weights    %lld bytes, sha256 %s\n", static_cast<long long>(j.weights_size()),
                j.weights_sha256().c_str());
  }
  if (!j.trials().empty()) {
    // Ranked by final validation loss, as the reference reported its grid.
    std::vector<trainer::v1::TrialResult> ranked(j.trials().begin(), j.trials().end());
    std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
      return a.final().validation_loss() < b.final().validation_loss();
    });
    std::printf("\n%-5s %-6s %-44s %-9s %-8s %-7s %-8s %s\n", "rank", "trial", "settings",
                "val loss", "val acc", "epochs", "time s", "note");
    int rank = 1;
    for (const auto& t : ranked) {
      std::vector<std::string> settings;
      for (const auto& s : t.settings()) {
        if (s.name() == "epochs") continue;
        settings.push_back(absl::StrFormat(
            "%s %g",
            s.name() == "learning_rate"            ? "lr"
            : s.name() == "backbone_learning_rate" ? "backbone"
                                                   : s.name().c_str(),
            s.value()));
      }
      std::string note;
      if (t.run() != 0 && t.run() != t.trial()) note = absl::StrCat("shares trial ", t.run(), "'s run");
      if (!t.stopped().empty()) note = "stopped early (ASHA)";
      std::printf("%-5d %-6d %-44s %-9.4f %-8s %-7s %-8.1f %s\n", rank++, t.trial(),
                  absl::StrJoin(settings, ", ").c_str(), t.final().validation_loss(),
                  Pct(t.final().validation_accuracy()).c_str(),
                  absl::StrCat(t.epochs_run(), "/", t.epochs()).c_str(), t.seconds(),
                  note.c_str());
    }
    const auto& sum = j.sweep_summary();
    if (sum.epochs_requested() > 0) {
      std::printf("cost       %d epochs trained for trials asking %d in all (%.0f%% saved)%s\n",
                  sum.epochs_trained(), sum.epochs_requested(),
                  100.0 * (1.0 - static_cast<double>(sum.epochs_trained()) /
                                     sum.epochs_requested()),
                  sum.trials_stopped() > 0
                      ? absl::StrCat("; ", sum.trials_stopped(), " trial(s) stopped by ASHA").c_str()
                      : "");
    }
  }
}

int Status(TrainingService::Stub& stub, const std::string& id) {
  const trainer::v1::Job j = GetJobOrFail(stub, id);
  if (JsonOutput()) {
    std::printf("%s\n", ToJson(j).c_str());
  } else {
    PrintJob(j);
  }
  return 0;
}

int List(TrainingService::Stub& stub) {
  trainer::v1::ListJobsRequest req;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_state), ',', absl::SkipEmpty())) {
    trainer::v1::JobState state;
    if (!trainer::v1::JobState_Parse(absl::AsciiStrToUpper(s), &state)) {
      Fail(absl::StrCat("--state: unknown state ", s));
    }
    req.add_states(state);
  }
  const int limit = absl::GetFlag(FLAGS_limit);
  std::vector<trainer::v1::Job> jobs;
  do {
    grpc::ClientContext ctx;
    Authorize(&ctx);
    SetUnaryDeadline(&ctx);
    trainer::v1::ListJobsResponse resp;
    grpc::Status st = stub.ListJobs(&ctx, req, &resp);
    if (!st.ok()) FailRpc("list", st);
    for (auto& j : *resp.mutable_jobs()) jobs.push_back(std::move(j));
    req.set_page_token(resp.next_page_token());
  } while (!req.page_token().empty() && (limit <= 0 || static_cast<int>(jobs.size()) < limit));
  if (limit > 0 && static_cast<int>(jobs.size()) > limit) jobs.resize(limit);
  if (JsonOutput()) {
    trainer::v1::ListJobsResponse all;
    for (auto& j : jobs) *all.add_jobs() = j;
    std::printf("%s\n", ToJson(all).c_str());
    return 0;
  }
  std::printf("%-12s %-9s %-11s %-20s %-7s %-9s %s\n", "JOB", "KIND", "STATE", "DATASET",
              "EPOCH", "VAL ACC", "CREATED");
  for (const auto& j : jobs) {
    const std::string created = absl::FormatTime(
        "%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(j.create_time_ms()), absl::LocalTimeZone());
    std::printf("%-12s %-9s %-11s %-20s %-7s %-9s %s\n", j.id().c_str(),
                Kind(j.spec().kind()).c_str(), State(j.state()).c_str(),
                j.spec().dataset().c_str(),
                j.has_latest() ? absl::StrCat(j.latest().epoch(), "/", j.spec().epochs()).c_str()
                               : "-",
                j.has_latest() ? Pct(j.latest().validation_accuracy()).c_str() : "-",
                created.c_str());
  }
  return 0;
}

int Cancel(TrainingService::Stub& stub, const std::string& id) {
  grpc::ClientContext ctx;
  Authorize(&ctx);
  SetUnaryDeadline(&ctx);
  trainer::v1::CancelJobRequest req;
  req.set_job_id(id);
  trainer::v1::CancelJobResponse resp;
  grpc::Status st = stub.CancelJob(&ctx, req, &resp);
  if (!st.ok()) FailRpc("cancel " + id, st);
  if (JsonOutput()) {
    std::printf("%s\n", ToJson(resp.job()).c_str());
  } else {
    std::printf("%s: %s\n", id.c_str(), State(resp.job().state()).c_str());
  }
  return 0;
}

// The job's events so far (replayed up to the last one when asked).
std::vector<trainer::v1::JobEvent> History(TrainingService::Stub& stub, const std::string& id) {
  const trainer::v1::Job job = GetJobOrFail(stub, id);
  std::vector<trainer::v1::JobEvent> events;
  if (job.last_seq() == 0) return events;
  grpc::ClientContext ctx;
  Authorize(&ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  trainer::v1::StreamMetricsRequest req;
  req.set_job_id(id);
  auto reader = stub.StreamMetrics(&ctx, req);
  trainer::v1::StreamMetricsResponse msg;
  while (reader->Read(&msg)) {
    events.push_back(msg.event());
    if (msg.event().seq() >= job.last_seq()) {
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status st = reader->Finish();
  if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED) FailRpc("plot " + id, st);
  return events;
}

void WriteImage(const std::string& path, const cv::Mat& img) {
  bool ok = false;
  try {
    ok = cv::imwrite(path, img);
  } catch (const cv::Exception& e) {
    Fail(absl::StrCat("cannot write ", path, ": ", e.what()));
  }
  if (!ok) Fail(absl::StrCat("cannot write ", path, " (use a .png name in a writable folder)"));
}

int Plot(TrainingService::Stub& stub, const std::string& id) {
  const std::string out = absl::GetFlag(FLAGS_o);
  if (out.empty()) Fail("plot: -o FILE.png is required");
  const trainer::v1::Job job = GetJobOrFail(stub, id);
  const auto events = History(stub, id);
  std::vector<Panel> panels(2);
  panels[0] = {"Loss", "epoch", "cross-entropy (nats)", {}};
  panels[1] = {"Accuracy", "epoch", "accuracy (%)", {}};
  if (job.spec().kind() == trainer::v1::SWEEP) {
    // One validation line per sweep run (trials sharing a run share its line).
    std::map<int, std::map<int, trainer::v1::EpochMetrics>> runs;
    for (const auto& e : events) {
      if (e.has_epoch()) runs[e.epoch().trial()][e.epoch().epoch()] = e.epoch();
    }
    size_t i = 0;
    for (const auto& [run, epochs] : runs) {
      Series loss{absl::StrCat("trial ", run, " val"), {}, PaletteColor(i), 2, true};
      Series acc = loss;
      for (const auto& [epoch, m] : epochs) {
        loss.points.emplace_back(epoch, m.validation_loss());
        acc.points.emplace_back(epoch, 100 * m.validation_accuracy());
      }
      panels[0].series.push_back(loss);
      panels[1].series.push_back(acc);
      ++i;
    }
    panels[0].title = "Validation loss per sweep run";
    panels[1].title = "Validation accuracy per sweep run";
  } else {
    // Later attempts supersede earlier points of the same step or epoch.
    std::map<int64_t, std::pair<double, double>> batches;  // step -> (x, loss)
    std::map<int, trainer::v1::EpochMetrics> epochs;
    for (const auto& e : events) {
      if (e.has_batch() && e.batch().batches() > 0) {
        const auto& b = e.batch();
        batches[b.global_step()] = {b.epoch() - 1 + (b.batch() + 1.0) / b.batches(), b.loss()};
      }
      if (e.has_epoch()) epochs[e.epoch().epoch()] = e.epoch();
    }
    Series raw{"batch loss", {}, cv::Scalar(230, 200, 170), 1, false};
    Series smooth{"batch loss (smoothed)", {}, PaletteColor(0), 2, false};
    double ema = 0;
    bool first = true;
    for (const auto& [step, point] : batches) {
      raw.points.push_back(point);
      ema = first ? point.second : 0.9 * ema + 0.1 * point.second;
      first = false;
      smooth.points.emplace_back(point.first, ema);
    }
    Series train_loss{"train loss (epoch)", {}, PaletteColor(1), 2, true};
    Series val_loss{"validation loss", {}, PaletteColor(2), 2, true};
    Series train_acc{"train accuracy", {}, PaletteColor(1), 2, true};
    Series val_acc{"validation accuracy", {}, PaletteColor(2), 2, true};
    for (const auto& [epoch, m] : epochs) {
      train_loss.points.emplace_back(epoch, m.train_loss());
      val_loss.points.emplace_back(epoch, m.validation_loss());
      train_acc.points.emplace_back(epoch, 100 * m.train_accuracy());
      val_acc.points.emplace_back(epoch, 100 * m.validation_accuracy());
    }
    panels[0].series = {raw, smooth, train_loss, val_loss};
    panels[1].series = {train_acc, val_acc};
  }
  for (auto& p : panels) p.title = absl::StrCat(id, ": ", p.title);
  const cv::Mat img = Chart(panels).Render();
  WriteImage(out, img);
  if (JsonOutput()) {
    std::printf("{\"path\":\"%s\",\"width\":%d,\"height\":%d}\n", out.c_str(), img.cols,
                img.rows);
  } else {
    std::printf("wrote %s (%dx%d)\n", out.c_str(), img.cols, img.rows);
  }
  return 0;
}

int Report(TrainingService::Stub& stub, const std::string& id) {
  const trainer::v1::Job job = GetJobOrFail(stub, id);
  if (!job.has_evaluation()) {
    Fail(absl::StrCat("report: job ", id, " has no evaluation yet (it is ",
                      State(job.state()), "; reports exist once a non-sweep job SUCCEEDED)"),
         4);
  }
  const auto& ev = job.evaluation();
  const std::string confusion = absl::GetFlag(FLAGS_confusion);
  if (!confusion.empty()) {
    const int n = ev.classes_size();
    if (ev.confusion_size() != n * n) Fail("report: the stored confusion matrix is malformed");
    std::vector<int64_t> counts(ev.confusion().begin(), ev.confusion().end());
    std::vector<std::string> names;
    for (const auto& c : ev.classes()) names.push_back(c.name());
    WriteImage(confusion, DrawConfusion(counts, n, names));
  }
  if (JsonOutput()) {
    std::printf("%s\n", ToJson(job).c_str());
    return 0;
  }
  std::printf("job        %s (%s, %d classes)\n", id.c_str(), job.spec().dataset().c_str(),
              ev.classes_size());
  std::printf("top-1      %s of %lld validation images\n", Pct(ev.top1_accuracy()).c_str(),
              static_cast<long long>(ev.images()));
  std::printf("top-5      %s\n", Pct(ev.top5_accuracy()).c_str());
  std::vector<trainer::v1::ClassMetrics> worst(ev.classes().begin(), ev.classes().end());
  std::stable_sort(worst.begin(), worst.end(), [](const auto& a, const auto& b) {
    return a.recall() < b.recall();
  });
  worst.resize(std::min<size_t>(10, worst.size()));
  std::printf("\nworst classes (by accuracy on their validation images)\n");
  std::printf("%-28s %8s %9s %10s\n", "class", "images", "accuracy", "precision");
  for (const auto& c : worst) {
    std::printf("%-28s %8lld %9s %10s\n", c.name().c_str(), static_cast<long long>(c.support()),
                Pct(c.recall()).c_str(), Pct(c.precision()).c_str());
  }
  if (!confusion.empty()) std::printf("\nwrote %s\n", confusion.c_str());
  return 0;
}

int Classify(TrainingService::Stub& stub, const std::vector<std::string>& args) {
  if (args.size() < 4) Fail("classify: usage: trainctl classify JOB IMAGE [IMAGE ...] [--top=5]");
  trainer::v1::ClassifyRequest req;
  req.set_job_id(args[2]);
  req.set_top_k(absl::GetFlag(FLAGS_top));
  req.set_trial(absl::GetFlag(FLAGS_trial));
  for (size_t i = 3; i < args.size(); ++i) {
    auto bytes = ReadFile(args[i]);
    if (!bytes.ok()) Fail(absl::StrCat("classify: ", bytes.status().message()));
    req.add_images(*bytes);
  }
  grpc::ClientContext ctx;
  Authorize(&ctx);
  SetUnaryDeadline(&ctx);
  trainer::v1::ClassifyResponse resp;
  grpc::Status st = stub.Classify(&ctx, req, &resp);
  if (!st.ok()) FailRpc("classify " + args[2], st);
  if (JsonOutput()) {
    std::printf("%s\n", ToJson(resp).c_str());
    return 0;
  }
  for (int i = 0; i < resp.results_size(); ++i) {
    std::vector<std::string> top;
    for (const auto& p : resp.results(i).predictions()) {
      top.push_back(absl::StrFormat("%s %.1f%%", p.class_name(), 100 * p.probability()));
    }
    std::printf("%s: %s\n", args[3 + i].c_str(), absl::StrJoin(top, ", ").c_str());
  }
  return 0;
}

// Where to point TensorBoard: every job's event files sit under one folder.
int Tensorboard(TrainingService::Stub& stub, const std::vector<std::string>& args) {
  if (args.size() > 3) Fail(absl::StrCat("tensorboard: unexpected argument ", args[3]));
  std::string dir;
  if (args.size() == 3) {
    dir = GetJobOrFail(stub, args[2]).tensorboard_dir();
  } else {
    grpc::ClientContext ctx;
    Authorize(&ctx);
    SetUnaryDeadline(&ctx);
    trainer::v1::ListJobsRequest req;
    req.set_page_size(1);
    trainer::v1::ListJobsResponse resp;
    grpc::Status st = stub.ListJobs(&ctx, req, &resp);
    if (!st.ok()) FailRpc("tensorboard", st);
    if (resp.jobs().empty()) Fail("tensorboard: no jobs yet, so no event files");
    dir = std::filesystem::path(resp.jobs(0).tensorboard_dir()).parent_path().string();
  }
  if (JsonOutput()) {
    std::printf("{\"logdir\":\"%s\"}\n", dir.c_str());
  } else {
    std::printf("tensorboard --logdir %s\n", dir.c_str());
  }
  return 0;
}

int Delete(TrainingService::Stub& stub, const std::string& id) {
  grpc::ClientContext ctx;
  Authorize(&ctx);
  SetUnaryDeadline(&ctx);
  trainer::v1::DeleteJobRequest req;
  req.set_job_id(id);
  trainer::v1::DeleteJobResponse resp;
  grpc::Status st = stub.DeleteJob(&ctx, req, &resp);
  if (!st.ok()) FailRpc("delete " + id, st);
  if (JsonOutput()) {
    std::printf("{\"job_id\":\"%s\",\"freed_bytes\":%lld}\n", id.c_str(),
                static_cast<long long>(resp.freed_bytes()));
  } else {
    std::printf("deleted %s (%.1f MB freed)\n", id.c_str(), resp.freed_bytes() / 1e6);
  }
  return 0;
}

int Weights(TrainingService::Stub& stub, const std::string& id) {
  const std::string out = absl::GetFlag(FLAGS_o);
  if (out.empty()) Fail("weights: -o FILE is required");
  trainer::v1::GetWeightsRequest req;
  req.set_job_id(id);
  req.set_trial(absl::GetFlag(FLAGS_trial));
  const std::string format = absl::AsciiStrToLower(absl::GetFlag(FLAGS_format));
  if (format == "pth") {
    req.set_format(trainer::v1::PTH);
  } else if (format == "safetensors") {
    req.set_format(trainer::v1::SAFETENSORS);
  } else {
    Fail("--format: must be pth or safetensors");
  }
  // An interrupted download leaves FILE.part and, beside it, the digest the
  // server announced; the next run continues from the part's end if the
  // server still has the same file, and starts over otherwise.
  const std::string part = out + ".part";
  const std::string part_sha = out + ".part.sha256";
  auto cleanup = [&] {
    std::remove(part.c_str());
    std::remove(part_sha.c_str());
  };
  std::string expected_sha;
  int64_t received = 0;
  Sha256 sha;
  {
    std::ifstream meta(part_sha);
    std::ifstream have(part, std::ios::binary);
    if (meta && have && (meta >> expected_sha) && expected_sha.size() == 64) {
      std::string buf(1 << 20, '\0');
      while (have.read(buf.data(), static_cast<std::streamsize>(buf.size())) || have.gcount()) {
        sha.Update(absl::string_view(buf.data(), static_cast<size_t>(have.gcount())));
        received += have.gcount();
      }
    } else {
      expected_sha.clear();
    }
  }
  const int64_t resumed_at = received;
  req.set_offset(received);
  std::ofstream file(part, std::ios::binary | (received > 0 ? std::ios::app : std::ios::trunc));
  if (!file) Fail(absl::StrCat("cannot write ", part));
  grpc::ClientContext ctx;
  Authorize(&ctx);
  auto reader = stub.GetWeights(&ctx, req);
  trainer::v1::GetWeightsResponse msg;
  trainer::v1::WeightsHeader header;
  bool have_header = false;
  bool stale = false;
  while (reader->Read(&msg)) {
    if (msg.has_header()) {
      header = msg.header();
      have_header = true;
      if (!expected_sha.empty() && header.sha256() != expected_sha) {
        stale = true;  // the job's weights changed since the part was written
        ctx.TryCancel();
        break;
      }
      std::ofstream(part_sha, std::ios::trunc) << header.sha256() << "\n";
    }
    if (!msg.chunk().empty()) {
      if (msg.offset() != received) {
        Fail(absl::StrCat("weights: chunk at offset ", msg.offset(), ", expected ", received));
      }
      file.write(msg.chunk().data(), static_cast<std::streamsize>(msg.chunk().size()));
      sha.Update(msg.chunk());
      received += static_cast<int64_t>(msg.chunk().size());
    }
  }
  grpc::Status st = reader->Finish();
  file.close();
  if (stale) {
    cleanup();
    return Weights(stub, id);  // once more, from the start
  }
  if (!st.ok()) {
    if (received == resumed_at) {
      if (received == 0) cleanup();
    } else {
      std::fprintf(stderr,
                   "trainctl: weights: download interrupted at %lld of %lld bytes; run the same "
                   "command again to continue\n",
                   static_cast<long long>(received), static_cast<long long>(header.total_size()));
    }
    FailRpc("weights " + id, st);
  }
  if (!file || !have_header) {
    cleanup();
    Fail(absl::StrCat("weights: ", have_header ? "cannot write " + part : "no header received"));
  }
  const std::string digest = sha.HexDigest();
  if (received != header.total_size() || digest != header.sha256()) {
    cleanup();
    Fail(absl::StrCat("weights: download corrupt (", received, " of ", header.total_size(),
                      " bytes, sha256 ", digest, " instead of ", header.sha256(), ")"));
  }
  std::remove(part_sha.c_str());
  if (std::rename(part.c_str(), out.c_str()) != 0) {
    cleanup();
    Fail(absl::StrCat("cannot rename ", part, " to ", out));
  }
  if (JsonOutput()) {
    std::printf("{\"path\":\"%s\",\"size\":%lld,\"sha256\":\"%s\",\"format\":\"%s\"}\n",
                out.c_str(), static_cast<long long>(received), digest.c_str(), format.c_str());
  } else {
    std::printf("wrote %s (%.1f MB, sha256 %s, verified%s)\n", out.c_str(), received / 1e6,
                digest.c_str(),
                resumed_at > 0
                    ? absl::StrCat("; continued from byte ", resumed_at).c_str()
                    : "");
  }
  return 0;
}

int DemoData(const std::string& dir) {
  absl::Status st = MakeDemoDataset(dir, absl::GetFlag(FLAGS_classes),
                                    absl::GetFlag(FLAGS_per_class), 0);
  if (!st.ok()) Fail(std::string(st.message()));
  if (!JsonOutput()) {
    std::printf("wrote %d classes x %d images under %s\n", absl::GetFlag(FLAGS_classes),
                absl::GetFlag(FLAGS_per_class), dir.c_str());
  }
  return 0;
}

int Dispatch(const std::vector<std::string>& args) {
  const std::string out = absl::GetFlag(FLAGS_output);
  if (out != "human" && out != "json") Fail("--output: must be human or json");
  if (args.size() < 2) Fail("missing command; see trainctl --help");
  const std::string& cmd = args[1];
  auto need_arg = [&](const char* what) -> const std::string& {
    if (args.size() < 3) Fail(absl::StrCat(cmd, ": missing ", what));
    if (args.size() > 3) Fail(absl::StrCat(cmd, ": unexpected argument ", args[3]));
    return args[2];
  };
  if (cmd == "demo-data") return DemoData(need_arg("DIR"));
  auto stub = Connect();
  if (cmd == "submit") {
    if (args.size() > 2) Fail(absl::StrCat("submit: unexpected argument ", args[2]));
    return Submit(*stub);
  }
  if (cmd == "watch") return Watch(*stub, need_arg("JOB"), absl::GetFlag(FLAGS_after));
  if (cmd == "status") return Status(*stub, need_arg("JOB"));
  if (cmd == "list") return List(*stub);
  if (cmd == "cancel") return Cancel(*stub, need_arg("JOB"));
  if (cmd == "weights") return Weights(*stub, need_arg("JOB"));
  if (cmd == "delete") return Delete(*stub, need_arg("JOB"));
  if (cmd == "tensorboard") return Tensorboard(*stub, args);
  if (cmd == "plot") return Plot(*stub, need_arg("JOB"));
  if (cmd == "classify") return Classify(*stub, args);
  if (cmd == "report") return Report(*stub, need_arg("JOB"));
  Fail(absl::StrCat("unknown command \"", cmd, "\"; see trainctl --help"));
}

}  // namespace

int RunTrainctl(const std::vector<std::string>& args) {
  try {
    return Dispatch(args);
  } catch (const Failure& f) {
    return f.code;
  }
}

}  // namespace traind::client
