// Classifies images with a trained model: decode, resize and normalise as
// validation does, forward in eval mode, softmax, top k.
//
// Thread-safe: Classify may be called from several threads at once (the
// model is only read). It runs on the calling thread alone (an RPC handler's,
// which must not start LibTorch thread pools: see intra_op.h); requests run
// side by side on the RPC threads.
#ifndef TRAIND_SERVER_TRAIN_CLASSIFIER_H_
#define TRAIND_SERVER_TRAIN_CLASSIFIER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/train/config.h"

namespace traind::train {

class Classifier {
 public:
  // Loads a state_dict file (safetensors or .pth) of a ResNet-18 with
  // `num_classes` outputs.
  static absl::StatusOr<std::unique_ptr<Classifier>> Load(const std::string& weights_path,
                                                          int num_classes, int image_size);
  ~Classifier();
  Classifier(const Classifier&) = delete;
  Classifier& operator=(const Classifier&) = delete;

  // For each encoded image, its top_k classes, most probable first.
  // INVALID_ARGUMENT naming the image index when one does not decode.
  absl::StatusOr<std::vector<std::vector<Prediction>>> Classify(
      const std::vector<std::string>& encoded_images, int top_k) const;

 private:
  struct Impl;
  explicit Classifier(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_CLASSIFIER_H_
