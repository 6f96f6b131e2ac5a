#include "server/worker/rank.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/numbers.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "server/launch/rank_codec.h"
#include "server/train/allocator.h"
#include "server/train/intra_op.h"
#include "server/train/collective.h"
#include "server/train/trainer.h"
#include "traind/internal/v1/ranks.grpc.pb.h"

namespace traind::worker {
namespace {

namespace pb = ::traind::internal::v1;
using launch::RankMessage;

namespace fs = std::filesystem;

std::optional<std::string> Env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

// The first of `names` that is set, as an integer.
absl::StatusOr<int> IntEnv(std::initializer_list<const char*> names, std::optional<int> fallback) {
  for (const char* n : names) {
    if (auto v = Env(n)) {
      int out;
      if (!absl::SimpleAtoi(*v, &out) || out < 0) {
        return absl::InvalidArgumentError(absl::StrCat(n, "=", *v, " is not a number >= 0"));
      }
      return out;
    }
  }
  if (fallback) return *fallback;
  return absl::InvalidArgumentError(
      absl::StrCat("none of ", absl::StrJoin(names, ", "), " is set"));
}

std::string HostName() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

// The address of this host on the route to `master` (a UDP "connect"
// sends nothing): the interface rank 0 and the other ranks can reach.
std::string OwnAddressToward(const std::string& master) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(master.c_str(), "9", &hints, &found) != 0 || !found) return HostName();
  std::string own = HostName();
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && connect(fd, found->ai_addr, found->ai_addrlen) == 0) {
    sockaddr_in addr{};
    socklen_t len = sizeof(addr);
    char text[INET_ADDRSTRLEN] = {};
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
        inet_ntop(AF_INET, &addr.sin_addr, text, sizeof(text))) {
      own = text;
    }
  }
  if (fd >= 0) close(fd);
  freeaddrinfo(found);
  return own;
}

absl::Status FromGrpc(const grpc::Status& st, const std::string& what) {
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                      absl::StrCat(what, ": ", st.error_message()));
}

class Link {
 public:
  Link(const std::string& address, const std::string& ca_pem, pb::AttemptKey key)
      : key_(std::move(key)) {
    std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
    if (!ca_pem.empty()) {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = ca_pem;
      creds = grpc::SslCredentials(ssl);
    }
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(16 << 20);
    stub_ = pb::Ranks::NewStub(grpc::CreateCustomChannel(address, creds, args));
  }

  const pb::AttemptKey& key() const { return key_; }
  // How long reports, uploads and the outcome keep retrying while the
  // control plane is unreachable or does not know the attempt yet (it is
  // restarting and will take the attempt up again).
  void set_patience(absl::Duration d) { patience_ = d; }

  template <typename F>
  absl::Status Retrying(F call) {
    const absl::Time give_up = absl::Now() + patience_;
    absl::Duration wait = absl::Milliseconds(200);
    while (true) {
      absl::Status st = call();
      const bool transient = absl::IsUnavailable(st) || absl::IsUnauthenticated(st) ||
                             absl::IsDeadlineExceeded(st);
      if (st.ok() || !transient || absl::Now() + wait > give_up) return st;
      absl::SleepFor(wait);
      wait = std::min(wait * 2, absl::Seconds(2));
    }
  }
  pb::Ranks::Stub* stub() { return stub_.get(); }

  absl::StatusOr<pb::JoinResponse> Join(int rank, int world) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    ctx.set_wait_for_ready(true);
    pb::JoinRequest req;
    *req.mutable_key() = key_;
    req.set_rank(rank);
    req.set_world_size(world);
    req.set_host(HostName());
    pb::JoinResponse resp;
    auto st = stub_->Join(&ctx, req, &resp);
    if (!st.ok()) return FromGrpc(st, "joining the control plane");
    return resp;
  }

  absl::Status Fetch(pb::FileKind kind, const std::string& path) {
    grpc::ClientContext ctx;
    pb::FetchRequest req;
    *req.mutable_key() = key_;
    req.set_kind(kind);
    auto reader = stub_->Fetch(&ctx, req);
    pb::FileChunk chunk;
    std::string bytes, sha;
    int64_t size = -1;
    while (reader->Read(&chunk)) {
      if (size < 0) {
        size = chunk.total_size();
        sha = chunk.sha256();
      }
      bytes += chunk.data();
    }
    auto st = reader->Finish();
    if (!st.ok()) return FromGrpc(st, absl::StrCat("fetching ", pb::FileKind_Name(kind)));
    if (static_cast<int64_t>(bytes.size()) != size || Sha256Hex(bytes) != sha) {
      return absl::DataLossError(absl::StrCat(pb::FileKind_Name(kind),
                                              ": the received bytes do not match their digest"));
    }
    return WriteFileAtomically(path, bytes);
  }

  absl::Status Upload(pb::FileKind kind, const std::string& path,
                      const train::CheckpointInfo* checkpoint) {
    return Retrying([&] { return UploadOnce(kind, path, checkpoint); });
  }

  absl::Status UploadOnce(pb::FileKind kind, const std::string& path,
                          const train::CheckpointInfo* checkpoint) {
    auto bytes = ReadFile(path);
    if (!bytes.ok()) return bytes.status();
    grpc::ClientContext ctx;
    pb::UploadResponse resp;
    auto writer = stub_->Upload(&ctx, &resp);
    pb::UploadChunk chunk;
    *chunk.mutable_key() = key_;
    chunk.set_kind(kind);
    chunk.set_total_size(static_cast<int64_t>(bytes->size()));
    chunk.set_sha256(Sha256Hex(*bytes));
    if (checkpoint) {
      chunk.set_epoch(checkpoint->epoch);
      chunk.set_next_batch(checkpoint->next_batch);
      chunk.set_global_step(checkpoint->global_step);
    }
    constexpr size_t kChunk = 1 << 20;
    size_t at = 0;
    do {
      const size_t n = std::min(kChunk, bytes->size() - at);
      chunk.set_data(bytes->substr(at, n));
      if (!writer->Write(chunk)) break;
      chunk.Clear();
      at += n;
    } while (at < bytes->size());
    writer->WritesDone();
    auto st = writer->Finish();
    if (!st.ok()) return FromGrpc(st, absl::StrCat("uploading ", pb::FileKind_Name(kind)));
    return absl::OkStatus();
  }

  absl::StatusOr<pb::ReportResponse> Report(const RankMessage& m) {
    absl::StatusOr<pb::ReportResponse> reply;
    Retrying([&] {
      reply = ReportOnce(&m);
      return reply.status();
    }).IgnoreError();
    return reply;
  }

  // One report; with no message, the stop flags alone (a poll), once.
  absl::StatusOr<pb::ReportResponse> ReportOnce(const RankMessage* m = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(m ? 30 : 10));
    pb::ReportRequest req;
    *req.mutable_key() = key_;
    if (m) *req.add_progress() = launch::EncodeProgress(*m);
    pb::ReportResponse resp;
    auto st = stub_->Report(&ctx, req, &resp);
    if (!st.ok()) return FromGrpc(st, "reporting to the control plane");
    return resp;
  }

  void Finish(const absl::Status& status) {
    Retrying([&] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      pb::FinishRequest req;
      *req.mutable_key() = key_;
      req.set_code(static_cast<int>(status.code()));
      req.set_message(std::string(status.message()));
      pb::FinishResponse resp;
      return FromGrpc(stub_->Finish(&ctx, req, &resp), "reporting the outcome");
    }).IgnoreError();
  }

 private:
  const pb::AttemptKey key_;
  std::unique_ptr<pb::Ranks::Stub> stub_;
  absl::Duration patience_ = absl::ZeroDuration();
};

// Rank 0's progress, sent to the control plane as it happens. The reply to
// each report carries cancellation; a control plane that cannot be reached
// stops the run (it will be run again from its checkpoint).
class RemoteSink final : public train::ProgressSink {
 public:
  RemoteSink(Link* link, train::CancelToken* cancel) : link_(link), cancel_(cancel) {}

  void OnDataset(const train::DatasetSummary& s) override {
    RankMessage m;
    m.kind = RankMessage::kDataset;
    m.dataset = s;
    Send(m);
  }
  void OnBatch(const train::BatchProgress& b) override {
    RankMessage m;
    m.kind = RankMessage::kBatch;
    m.batch = b;
    Send(m);
  }
  void OnEpoch(const train::EpochResult& e) override {
    RankMessage m;
    m.kind = RankMessage::kEpoch;
    m.epoch = e;
    Send(m);
  }
  void OnInfo(const std::string& text) override { SendText(RankMessage::kInfo, text); }
  void OnWarning(const std::string& text) override { SendText(RankMessage::kWarning, text); }
  void OnEvaluation(const train::Evaluation& e) override {
    RankMessage m;
    m.kind = RankMessage::kEvaluation;
    m.evaluation = e;
    Send(m);
  }
  absl::Status OnCheckpoint(const train::CheckpointInfo& c) override {
    auto st = link_->Upload(pb::CHECKPOINT, c.path, &c);
    std::error_code ec;
    fs::remove(c.path, ec);  // the control plane keeps checkpoints
    return st;
  }
  const absl::Status& link_error() const { return link_error_; }
  void OnHosts(const std::vector<std::string>& hosts) {
    RankMessage m;
    m.kind = RankMessage::kHosts;
    m.hosts = hosts;
    Send(m);
  }

 private:
  void SendText(RankMessage::Kind kind, const std::string& text) {
    RankMessage m;
    m.kind = kind;
    m.text = text;
    Send(m);
  }
  void Send(const RankMessage& m) {
    if (!link_error_.ok()) return;
    auto reply = link_->Report(m);
    if (!reply.ok()) {
      link_error_ = reply.status();
      cancel_->Cancel();
      return;
    }
    if (reply->interrupt()) cancel_->Interrupt();
    if (reply->stop()) cancel_->Cancel();
  }

  Link* const link_;
  train::CancelToken* const cancel_;
  absl::Status link_error_;
};

// Rank 0 also asks between reports, so that a cancel that arrives while a
// step computes rides in that step's allreduce: the batch in flight is the
// last one reported, as in a one-process job.
class StopPoller {
 public:
  StopPoller(Link* link, train::CancelToken* cancel) : link_(link), cancel_(cancel) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~StopPoller() {
    {
      absl::MutexLock lock(&mu_);
      done_ = true;
    }
    thread_.join();
  }

 private:
  void Loop() {
    absl::MutexLock lock(&mu_);
    while (!done_ && !cancel_->cancelled()) {
      auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&done), absl::Milliseconds(50))) break;
      mu_.Unlock();
      auto reply = link_->ReportOnce();
      mu_.Lock();
      if (!reply.ok()) continue;  // the reports notice a lost link
      if (reply->interrupt()) cancel_->Interrupt();
      if (reply->stop()) cancel_->Cancel();
    }
  }

  Link* const link_;
  train::CancelToken* const cancel_;
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Ranks other than 0 report nothing (rank 0 reports the global figures).
class QuietSink final : public train::ProgressSink {
 public:
  void OnDataset(const train::DatasetSummary&) override {}
  void OnBatch(const train::BatchProgress&) override {}
  void OnEpoch(const train::EpochResult&) override {}
  void OnInfo(const std::string&) override {}
  void OnWarning(const std::string& text) override {
    std::fprintf(stderr, "traind worker: warning: %s\n", text.c_str());
  }
};

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "traind worker: %s\n", std::string(st.message()).c_str());
  return 2;
}

}  // namespace

int RunWorker() {
  train::TuneAllocator();
  train::SerialIntraOpByDefault();
  auto rank = IntEnv({"RANK", "SLURM_PROCID", "JOB_COMPLETION_INDEX"}, std::nullopt);
  if (!rank.ok()) return Fail(rank.status());
  auto world = IntEnv({"WORLD_SIZE", "SLURM_NTASKS"}, std::nullopt);
  if (!world.ok()) return Fail(world.status());
  auto local_rank = IntEnv({"LOCAL_RANK", "SLURM_LOCALID"}, 0);
  if (!local_rank.ok()) return Fail(local_rank.status());
  auto master_port = IntEnv({"MASTER_PORT"}, 29500);
  if (!master_port.ok()) return Fail(master_port.status());
  const auto master_addr = Env("MASTER_ADDR");
  const auto control = Env("TRAIND_CONTROL");
  const auto attempt = Env("TRAIND_ATTEMPT");
  const auto secret = Env("TRAIND_ATTEMPT_SECRET");
  if (!master_addr || !control || !attempt || !secret) {
    return Fail(absl::InvalidArgumentError(
        "MASTER_ADDR, TRAIND_CONTROL, TRAIND_ATTEMPT and TRAIND_ATTEMPT_SECRET must be set "
        "(the control plane's launcher sets them)"));
  }
  std::string ca_pem;
  if (auto ca = Env("TRAIND_CONTROL_CA")) {
    auto pem = ReadFile(*ca);
    if (!pem.ok()) return Fail(pem.status());
    ca_pem = *pem;
  }
  pb::AttemptKey key;
  key.set_attempt(*attempt);
  key.set_secret(*secret);
  Link link(*control, ca_pem, key);

  auto joined = link.Join(*rank, *world);
  if (!joined.ok()) return Fail(joined.status());
  train::TrainConfig config = launch::DecodeRunConfig(joined->config());

  // Files of this attempt, removed when the rank ends.
  std::string tmpl = (fs::temp_directory_path() / "traind-rank-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) return Fail(absl::InternalError("cannot create a temp folder"));
  const fs::path dir = tmpl;
  struct RemoveDir {
    fs::path dir;
    ~RemoveDir() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } remove_dir{dir};

  train::RankInfo info;
  info.rank = *rank;
  info.world_size = *world;
  info.local_rank = *local_rank;
  info.master_addr = *master_addr;
  info.master_port = *master_port;
  info.own_addr = Env("TRAIND_RANK_ADDR").value_or(OwnAddressToward(*master_addr));
  info.timeout_seconds = joined->timeout_seconds() > 0 ? joined->timeout_seconds() : 300;
  // Half the collective's timeout: the other ranks wait in the next
  // allreduce while rank 0 waits for the control plane.
  link.set_patience(absl::Seconds(info.timeout_seconds / 2));

  train::CancelToken cancel;
  RemoteSink remote(&link, &cancel);
  QuietSink quiet;
  train::ProgressSink* sink = *rank == 0 ? static_cast<train::ProgressSink*>(&remote) : &quiet;

  absl::Status status = [&]() -> absl::Status {
    if (!fs::is_directory(config.data.dir)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "dataset: ", config.data.dir, " is not a folder on host ", HostName(),
          " (rank ", *rank, "); every rank needs the dataset at the control plane's path"));
    }
    // The control plane's paths name files; the rank reads and writes its
    // own copies, and only rank 0 writes any.
    if (!config.initial_weights.empty()) {
      config.initial_weights = (dir / "initial-weights").string();
      if (auto st = link.Fetch(pb::INITIAL_WEIGHTS, config.initial_weights); !st.ok()) return st;
    }
    if (!config.resume_from.empty()) {
      config.resume_from = (dir / "resume.safetensors").string();
      if (auto st = link.Fetch(pb::RESUME_CHECKPOINT, config.resume_from); !st.ok()) return st;
    }
    config.checkpoint_dir = *rank == 0 ? (dir / "checkpoints").string() : "";
    config.output_pth = *rank == 0 ? (dir / "weights.pth").string() : "";
    config.output_safetensors = *rank == 0 ? (dir / "weights.safetensors").string() : "";
    auto collective = train::ConnectGloo(info);
    if (!collective.ok()) return collective.status();
    auto hosts = (*collective)->AllGatherStrings(
        "hosts", absl::StrCat(HostName(), " (", info.own_addr, ")"));
    if (!hosts.ok()) return hosts.status();
    std::vector<std::string> where;
    for (size_t r = 0; r < hosts->size(); ++r) {
      where.push_back(absl::StrCat("rank ", r, " on ", (*hosts)[r]));
    }
    if (*rank == 0) remote.OnHosts(*hosts);
    sink->OnInfo(absl::StrCat("distributed: world size ", *world, " over ",
                              joined->backend(), ", ", config.batch_size / *world,
                              " images per rank per step; ", absl::StrJoin(where, ", ")));
    std::optional<StopPoller> poller;
    if (*rank == 0) poller.emplace(&link, &cancel);
    auto result = train::TrainRank(config, collective->get(), sink, cancel);
    poller.reset();
    if (!result.ok()) return result.status();
    if (*rank == 0) {
      if (auto st = link.Upload(pb::WEIGHTS_PTH, config.output_pth, nullptr); !st.ok()) {
        return st;
      }
      if (auto st = link.Upload(pb::WEIGHTS_SAFETENSORS, config.output_safetensors, nullptr);
          !st.ok()) {
        return st;
      }
    }
    return absl::OkStatus();
  }();
  if (!remote.link_error().ok()) status = remote.link_error();
  // Rank 0 reports how the attempt ended; another rank reports only its own
  // failure that is not a lost peer (a dataset missing on its host), so
  // that the job fails with that reason rather than as a lost attempt.
  if (*rank == 0 || (!status.ok() && !absl::IsCancelled(status) &&
                     !absl::IsUnavailable(status))) {
    link.Finish(status);
  }
  if (!status.ok() && !absl::IsCancelled(status)) {
    std::fprintf(stderr, "traind worker: rank %d: %s\n", *rank, status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace traind::worker
