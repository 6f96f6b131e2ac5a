#include "server/train/trainer.h"

#include "server/train/run.h"
#include "server/train/weights.h"

namespace traind::train {

absl::StatusOr<TrainResult> Train(const TrainConfig& config, ProgressSink* sink,
                                  const CancelToken& cancel) {
  return CatchingLibraryErrors([&]() -> absl::StatusOr<TrainResult> {
    auto data = LoadData(config.data, sink);
    if (!data.ok()) return data.status();
    if (cancel.cancelled()) return absl::CancelledError("cancelled");
    return Run(config, sink, cancel).Execute(*data);
  });
}

absl::StatusOr<TrainResult> TrainRank(const TrainConfig& config, Collective* collective,
                                      ProgressSink* sink, const CancelToken& cancel) {
  return CatchingLibraryErrors([&]() -> absl::StatusOr<TrainResult> {
    auto data = LoadData(config.data, sink);
    if (!data.ok()) return data.status();
    return Run(config, sink, cancel, collective).Execute(*data);
  });
}

absl::Status CheckWeightsFile(const std::string& path) {
  return CatchingLibraryErrors([&]() -> absl::StatusOr<bool> {
           auto weights = LoadStateDict(path);
           if (!weights.ok()) return weights.status();
           ResNet model = ResNet18(1000);
           if (auto st = CopyIntoModule(*weights, *model, {"fc.weight", "fc.bias"}); !st.ok()) {
             return st;
           }
           return true;
         })
      .status();
}

}  // namespace traind::train
