#include "server/launch/attempts.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace traind::launch {
namespace {

std::string RandomHex(int bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), bytes) != 1) {
    std::abort();  // no randomness: never hand out a guessable secret
  }
  return absl::BytesToHexString(raw);
}

}  // namespace

Attempt::Attempt(std::string id, std::string secret, train::TrainConfig config, int world_size,
                 int timeout_seconds, std::string backend)
    : id_(std::move(id)),
      secret_(std::move(secret)),
      config_(std::move(config)),
      world_size_(world_size),
      timeout_seconds_(timeout_seconds),
      backend_(std::move(backend)) {}

bool Attempt::Matches(const std::string& secret) const {
  return secret.size() == secret_.size() &&
         CRYPTO_memcmp(secret.data(), secret_.data(), secret_.size()) == 0;
}

void Attempt::Post(std::vector<RankMessage> messages) {
  absl::MutexLock lock(&mu_);
  for (auto& m : messages) inbox_.push_back(std::move(m));
}

std::vector<RankMessage> Attempt::Take(absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !inbox_.empty(); };
  mu_.AwaitWithTimeout(absl::Condition(&ready), wait);
  std::vector<RankMessage> out(std::make_move_iterator(inbox_.begin()),
                               std::make_move_iterator(inbox_.end()));
  inbox_.clear();
  return out;
}

void Attempt::AttachCancel(const train::CancelToken* cancel) {
  absl::MutexLock lock(&mu_);
  cancel_ = cancel;
}

void Attempt::DetachCancel() {
  absl::MutexLock lock(&mu_);
  cancel_ = nullptr;
}

void Attempt::RequestStop(bool interrupt) {
  absl::MutexLock lock(&mu_);
  stop_ = true;
  interrupt_ = interrupt_ || interrupt;
}

bool Attempt::stop_requested() const {
  absl::MutexLock lock(&mu_);
  return stop_ || (cancel_ && cancel_->cancelled());
}

bool Attempt::interrupt_requested() const {
  absl::MutexLock lock(&mu_);
  return interrupt_ || (cancel_ && cancel_->interrupted());
}

void Attempt::SetOutcome(absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (!outcome_) outcome_ = std::move(status);
}

std::optional<absl::Status> Attempt::outcome() const {
  absl::MutexLock lock(&mu_);
  return outcome_;
}

std::shared_ptr<Attempt> AttemptRegistry::Create(const train::TrainConfig& config,
                                                 int world_size, int timeout_seconds,
                                                 const std::string& backend,
                                                 const std::string& id,
                                                 const std::string& secret) {
  auto attempt = std::make_shared<Attempt>(
      id.empty() ? absl::StrCat("attempt-", RandomHex(8)) : id,
      secret.empty() ? RandomHex(32) : secret, config, world_size, timeout_seconds, backend);
  absl::MutexLock lock(&mu_);
  attempts_[attempt->id()] = attempt;
  return attempt;
}

void AttemptRegistry::Remove(const std::string& id) {
  absl::MutexLock lock(&mu_);
  attempts_.erase(id);
}

std::shared_ptr<Attempt> AttemptRegistry::Find(const std::string& id,
                                               const std::string& secret) const {
  absl::MutexLock lock(&mu_);
  auto it = attempts_.find(id);
  if (it == attempts_.end() || !it->second->Matches(secret)) return nullptr;
  return it->second;
}

}  // namespace traind::launch
