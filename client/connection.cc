#include "client/connection.h"

#include <cstdlib>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "client/flags.h"
#include "common/file_util.h"

namespace traind::client {
namespace {

// A flag, else its environment variable.
std::string Setting(const absl::Flag<std::string>& flag, const char* env) {
  std::string v = absl::GetFlag(flag);
  if (v.empty()) {
    const char* e = std::getenv(env);
    if (e) v = e;
  }
  return v;
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  auto pem = ReadFile(path);
  if (!pem.ok()) return UsageError(absl::StrCat(what, ": ", pem.status().message()));
  return pem;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Connection>> Connection::Open() {
  std::string address = Setting(FLAGS_server, "TRAINCTL_SERVER");
  if (address.empty()) address = "127.0.0.1:50051";
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  const std::string ca = Setting(FLAGS_tls_ca, "TRAINCTL_TLS_CA");
  const std::string cert = Setting(FLAGS_tls_cert, "TRAINCTL_TLS_CERT");
  const std::string key = Setting(FLAGS_tls_key, "TRAINCTL_TLS_KEY");
  if (!ca.empty() || !cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!ca.empty()) {
      auto pem = ReadPem(ca, "--tls-ca");
      if (!pem.ok()) return pem.status();
      ssl.pem_root_certs = *pem;
    }
    if (!cert.empty()) {
      if (key.empty()) return UsageError("--tls-cert needs --tls-key");
      auto chain = ReadPem(cert, "--tls-cert");
      if (!chain.ok()) return chain.status();
      auto private_key = ReadPem(key, "--tls-key");
      if (!private_key.ok()) return private_key.status();
      ssl.pem_cert_chain = *chain;
      ssl.pem_private_key = *private_key;
    }
    credentials = grpc::SslCredentials(ssl);
  }
  return std::unique_ptr<Connection>(new Connection(
      trainer::v1::TrainingService::NewStub(grpc::CreateCustomChannel(address, credentials, args)),
      Setting(FLAGS_token, "TRAINCTL_TOKEN")));
}

void Connection::Prepare(grpc::ClientContext* context) const {
  if (!token_.empty()) context->AddMetadata("authorization", "Bearer " + token_);
}

absl::StatusOr<trainer::v1::Job> Connection::GetJob(const std::string& id) {
  trainer::v1::GetJobRequest request;
  request.set_job_id(id);
  auto response = Call(&Stub::GetJob, request, "status " + id);
  if (!response.ok()) return response.status();
  return response->job();
}

}  // namespace traind::client
