// Classify as a service over the job core, as model servers do it: it asks
// the core for a SUCCEEDED job's weights and figures (the caller's own
// jobs only), asks the engine to load the model, keeps the few models used
// last, and answers with class names.
//
// Thread-safety: Classify may be called from any thread; models run side by
// side on the callers' threads.
#ifndef TRAIND_SERVER_JOBS_CLASSIFY_H_
#define TRAIND_SERVER_JOBS_CLASSIFY_H_

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/jobs/caller.h"
#include "server/jobs/engine.h"
#include "server/jobs/job_manager.h"
#include "trainer/v1/training_service.pb.h"

namespace traind::jobs {

class ClassifyService {
 public:
  // Models kept loaded (ResNet-18: about 45 MB each), least recently used
  // dropped first.
  static constexpr size_t kKeptModels = 4;

  ClassifyService(JobManager* jobs, Engine* engine) : jobs_(jobs), engine_(engine) {}

  // Classifies encoded images with a SUCCEEDED job's final weights (or a
  // sweep trial's). At most 64 images of 8 MiB each; top_k in [1, 100]
  // (0: 5).
  absl::StatusOr<trainer::v1::ClassifyResponse> Classify(
      const trainer::v1::ClassifyRequest& request, const Caller& caller = Caller());

  // Models loaded so far (tests: the cache's effect).
  int64_t loads() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // The model of job `id`'s trial, loaded from `weights` on first use.
  absl::StatusOr<std::shared_ptr<const Model>> ModelOf(const trainer::v1::Job& job, int trial,
                                                       const std::string& weights)
      ABSL_LOCKS_EXCLUDED(mu_);

  JobManager* const jobs_;
  Engine* const engine_;
  mutable absl::Mutex mu_;
  // Most recently used first: ((job id, trial), weights path, model).
  struct Kept {
    std::pair<std::string, int> key;
    std::string weights;
    std::shared_ptr<const Model> model;
  };
  std::list<Kept> kept_ ABSL_GUARDED_BY(mu_);
  int64_t loads_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_CLASSIFY_H_
