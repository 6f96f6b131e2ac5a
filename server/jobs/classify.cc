#include "server/jobs/classify.h"

#include <vector>

#include "absl/strings/str_cat.h"

namespace traind::jobs {

absl::StatusOr<trainer::v1::ClassifyResponse> ClassifyService::Classify(
    const trainer::v1::ClassifyRequest& request, const Caller& caller) {
  constexpr size_t kMaxImages = 64;
  constexpr size_t kMaxImageBytes = size_t{8} << 20;
  if (request.images().empty()) return absl::InvalidArgumentError("images: none given");
  if (static_cast<size_t>(request.images_size()) > kMaxImages) {
    return absl::InvalidArgumentError(absl::StrCat("images: at most ", kMaxImages, " per call"));
  }
  for (int i = 0; i < request.images_size(); ++i) {
    if (request.images(i).size() > kMaxImageBytes) {
      return absl::InvalidArgumentError(absl::StrCat("images[", i, "]: ", request.images(i).size(),
                                                     " bytes, more than the 8 MiB limit"));
    }
  }
  if (request.top_k() < 0 || request.top_k() > 100) {
    return absl::InvalidArgumentError("top_k: must be in [1, 100]");
  }
  if (request.trial() < 0) return absl::InvalidArgumentError("trial: must be >= 0");
  const int top_k = request.top_k() == 0 ? 5 : request.top_k();
  // Resolves the weights (and refuses unfinished jobs, unknown trials and
  // other users' jobs).
  auto weights =
      jobs_->WeightsPath(request.job_id(), trainer::v1::SAFETENSORS, request.trial(), caller);
  if (!weights.ok()) return weights.status();
  auto job = jobs_->GetJob(request.job_id(), caller);
  if (!job.ok()) return job.status();
  auto model = ModelOf(*job, request.trial(), *weights);
  if (!model.ok()) return model.status();
  std::vector<std::string> images(request.images().begin(), request.images().end());
  auto predictions = (*model)->Classify(images, top_k);
  if (!predictions.ok()) return predictions.status();
  trainer::v1::ClassifyResponse response;
  for (const auto& per_image : *predictions) {
    auto* r = response.add_results();
    for (const auto& p : per_image) {
      auto* out = r->add_predictions();
      out->set_class_index(p.class_index);
      out->set_class_name(p.class_index < job->class_names_size() ? job->class_names(p.class_index)
                                                                  : absl::StrCat(p.class_index));
      out->set_probability(p.probability);
    }
  }
  return response;
}

absl::StatusOr<std::shared_ptr<const Model>> ClassifyService::ModelOf(const trainer::v1::Job& job,
                                                                      int trial,
                                                                      const std::string& weights) {
  const std::pair<std::string, int> key{job.id(), trial};
  {
    absl::MutexLock lock(&mu_);
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (it->key != key || it->weights != weights) continue;
      kept_.splice(kept_.begin(), kept_, it);
      return kept_.front().model;
    }
  }
  // Loaded outside the lock: other models keep serving meanwhile.
  auto loaded = engine_->LoadModel(weights, job.num_classes(), job.spec().image_size());
  if (!loaded.ok()) return loaded.status();
  absl::MutexLock lock(&mu_);
  ++loads_;
  kept_.remove_if([&](const Kept& k) { return k.key == key; });
  kept_.push_front({key, weights, *loaded});
  if (kept_.size() > kKeptModels) kept_.pop_back();
  return *loaded;
}

int64_t ClassifyService::loads() const {
  absl::MutexLock lock(&mu_);
  return loads_;
}

}  // namespace traind::jobs
