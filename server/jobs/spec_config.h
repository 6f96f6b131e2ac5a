// From a defaulted JobSpec (common/spec.h) to the engine's configuration:
// the one place where proto fields become train:: settings.
#ifndef TRAIND_SERVER_JOBS_SPEC_CONFIG_H_
#define TRAIND_SERVER_JOBS_SPEC_CONFIG_H_

#include <string>

#include "server/train/config.h"
#include "server/train/sweep.h"
#include "trainer/v1/training_service.pb.h"

namespace traind::jobs {

// `spec` has its defaults applied; `dataset_dir` is the resolved dataset.
train::TrainConfig ToConfig(const trainer::v1::JobSpec& spec, const std::string& dataset_dir);
train::SweepPlan ToPlan(const trainer::v1::SweepGrid& grid);

}  // namespace traind::jobs

#endif  // TRAIND_SERVER_JOBS_SPEC_CONFIG_H_
