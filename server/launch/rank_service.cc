#include "server/launch/rank_service.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "server/launch/rank_codec.h"
#include "server/jobs/engine.h"

namespace traind::launch {
namespace {

using internal::v1::FileKind;

grpc::Status Unauthenticated() {
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      "unknown attempt or wrong attempt secret");
}

grpc::Status ToGrpc(const absl::Status& st) {
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

}  // namespace

grpc::Status RankService::Join(grpc::ServerContext*, const internal::v1::JoinRequest* request,
                               internal::v1::JoinResponse* response) {
  auto attempt = attempts_->Find(request->key().attempt(), request->key().secret());
  if (!attempt) return Unauthenticated();
  if (request->world_size() != attempt->world_size() || request->rank() < 0 ||
      request->rank() >= attempt->world_size()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("rank ", request->rank(), " of ", request->world_size(),
                                     " does not fit this attempt's world size ",
                                     attempt->world_size()));
  }
  *response->mutable_config() = EncodeRunConfig(attempt->config());
  response->set_timeout_seconds(attempt->timeout_seconds());
  response->set_backend(attempt->backend());
  return grpc::Status::OK;
}

grpc::Status RankService::Report(grpc::ServerContext*, const internal::v1::ReportRequest* request,
                                 internal::v1::ReportResponse* response) {
  auto attempt = attempts_->Find(request->key().attempt(), request->key().secret());
  if (!attempt) return Unauthenticated();
  std::vector<RankMessage> messages;
  for (const auto& p : request->progress()) {
    RankMessage m;
    if (!DecodeProgress(p, &m)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "progress of no known kind");
    }
    messages.push_back(std::move(m));
  }
  attempt->Post(std::move(messages));
  response->set_stop(attempt->stop_requested());
  response->set_interrupt(attempt->interrupt_requested());
  return grpc::Status::OK;
}

grpc::Status RankService::Fetch(grpc::ServerContext*, const internal::v1::FetchRequest* request,
                                grpc::ServerWriter<internal::v1::FileChunk>* writer) {
  auto attempt = attempts_->Find(request->key().attempt(), request->key().secret());
  if (!attempt) return Unauthenticated();
  std::string path;
  if (request->kind() == internal::v1::INITIAL_WEIGHTS) path = attempt->config().initial_weights;
  if (request->kind() == internal::v1::RESUME_CHECKPOINT) path = attempt->config().resume_from;
  if (path.empty()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("this attempt has no ", FileKind_Name(request->kind())));
  }
  auto bytes = ReadFile(path);
  if (!bytes.ok()) return ToGrpc(bytes.status());
  constexpr size_t kChunk = 1 << 20;
  internal::v1::FileChunk chunk;
  chunk.set_total_size(static_cast<int64_t>(bytes->size()));
  chunk.set_sha256(Sha256Hex(*bytes));
  size_t at = 0;
  do {
    const size_t n = std::min(kChunk, bytes->size() - at);
    chunk.set_data(bytes->substr(at, n));
    if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "rank went away");
    chunk.clear_total_size();
    chunk.clear_sha256();
    at += n;
  } while (at < bytes->size());
  return grpc::Status::OK;
}

grpc::Status RankService::Upload(grpc::ServerContext*,
                                 grpc::ServerReader<internal::v1::UploadChunk>* reader,
                                 internal::v1::UploadResponse*) {
  internal::v1::UploadChunk first;
  if (!reader->Read(&first)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty upload");
  }
  auto attempt = attempts_->Find(first.key().attempt(), first.key().secret());
  if (!attempt) return Unauthenticated();
  const train::TrainConfig& config = attempt->config();
  std::string path;
  switch (first.kind()) {
    case internal::v1::CHECKPOINT:
      if (!config.checkpoint_dir.empty()) {
        path = (std::filesystem::path(config.checkpoint_dir) /
                absl::StrFormat("epoch-%03d-batch-%05d.safetensors", first.epoch(),
                                first.next_batch()))
                   .string();
      }
      break;
    case internal::v1::WEIGHTS_PTH:
      path = config.output_pth;
      break;
    case internal::v1::WEIGHTS_SAFETENSORS:
      path = config.output_safetensors;
      break;
    default:
      break;
  }
  if (path.empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("this attempt takes no ", FileKind_Name(first.kind())));
  }
  if (first.total_size() < 0 || first.total_size() > (int64_t{4} << 30)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "upload size out of range");
  }
  std::string bytes = first.data();
  internal::v1::UploadChunk chunk;
  while (reader->Read(&chunk)) {
    bytes += chunk.data();
    if (static_cast<int64_t>(bytes.size()) > first.total_size()) break;
  }
  if (static_cast<int64_t>(bytes.size()) != first.total_size() ||
      Sha256Hex(bytes) != first.sha256()) {
    return grpc::Status(grpc::StatusCode::DATA_LOSS,
                        absl::StrCat(FileKind_Name(first.kind()), ": received ", bytes.size(),
                                     " bytes that do not match the announced ",
                                     first.total_size(), " bytes and SHA-256"));
  }
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (auto st = WriteFileAtomically(path, bytes); !st.ok()) return ToGrpc(st);
  if (first.kind() == internal::v1::CHECKPOINT) {
    RankMessage m;
    m.kind = RankMessage::kCheckpoint;
    m.checkpoint.epoch = first.epoch();
    m.checkpoint.next_batch = first.next_batch();
    m.checkpoint.global_step = first.global_step();
    m.checkpoint.path = path;
    m.checkpoint.sha256 = first.sha256();
    m.checkpoint.size = first.total_size();
    attempt->Post({std::move(m)});
  }
  return grpc::Status::OK;
}

grpc::Status RankService::Finish(grpc::ServerContext*, const internal::v1::FinishRequest* request,
                                 internal::v1::FinishResponse*) {
  auto attempt = attempts_->Find(request->key().attempt(), request->key().secret());
  if (!attempt) return Unauthenticated();
  const auto code = static_cast<absl::StatusCode>(request->code());
  absl::Status st(code, request->message());
  if (code == absl::StatusCode::kUnavailable) st = jobs::AttemptLost(st);
  attempt->SetOutcome(st);
  return grpc::Status::OK;
}

}  // namespace traind::launch
