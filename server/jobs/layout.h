// Where a job's files live under the state directory; every artifact name
// is spelled here and nowhere else in server/jobs.
//
//   <state>/traind.db, <state>/LOCK
//   <state>/jobs/<id>/weights.{pth,safetensors}      final weights
//   <state>/jobs/<id>/trial-N.{pth,safetensors}      a sweep trial's weights
//                                                    (named by train::RunSweep)
//   <state>/jobs/<id>/checkpoints/                   resumable checkpoints
//   <state>/runs/<id>/[trial-N/]                     TensorBoard event files
//
// Thread-safety: immutable.
#ifndef TRAIND_SERVER_JOBS_LAYOUT_H_
#define TRAIND_SERVER_JOBS_LAYOUT_H_

#include <string>

#include "trainer/v1/training_service.pb.h"

namespace traind::jobs {

class JobLayout {
 public:
  explicit JobLayout(std::string state_dir) : state_dir_(std::move(state_dir)) {}

  std::string Database() const;
  std::string LockFile() const;
  std::string JobsRoot() const;
  std::string JobDir(const std::string& id) const;
  std::string CheckpointDir(const std::string& id) const;
  // The final weights (trial 0) or a sweep trial's, in `format`.
  std::string Weights(const std::string& id, trainer::v1::WeightsFormat format,
                      int trial = 0) const;
  // TensorBoard folder of the job (trial 0) or of one sweep trial.
  std::string RunsDir(const std::string& id, int trial = 0) const;

 private:
  const std::string state_dir_;
};

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_LAYOUT_H_
