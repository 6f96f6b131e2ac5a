#include "server/launch/rank_codec.h"

#include <cstddef>
#include <type_traits>
#include <utility>

namespace traind::launch {
namespace {

// The number of fields of an aggregate, counted by brace-initializing it
// with ever more values that convert to anything.
struct AnyField {
  template <typename T>
  operator T() const;  // unevaluated only
};

template <typename T, typename... Fields>
constexpr auto BraceInitializes(int) -> decltype(T{std::declval<Fields>()...}, true) {
  return true;
}
template <typename T, typename... Fields>
constexpr bool BraceInitializes(...) {
  return false;
}

template <typename T, typename... Fields>
constexpr size_t FieldCount() {
  if constexpr (BraceInitializes<T, Fields..., AnyField>(0)) {
    return FieldCount<T, Fields..., AnyField>();
  } else {
    return sizeof...(Fields);
  }
}

// A field added to one of these must be carried below (and set in
// rank_codec_test's Everything()); then change the count.
static_assert(FieldCount<train::TrainConfig>() == 19, "TrainConfig changed: carry the field");
static_assert(FieldCount<train::DataConfig>() == 8, "DataConfig changed: carry the field");
static_assert(FieldCount<train::AugmentConfig>() == 6, "AugmentConfig changed: carry the field");

}  // namespace

pb::RunConfig EncodeRunConfig(const train::TrainConfig& c) {
  pb::RunConfig p;
  p.set_scratch(c.kind == train::Kind::kScratch);
  p.set_data_dir(c.data.dir);
  for (const auto& e : c.data.exclude_classes) p.add_exclude_classes(e);
  p.set_image_size(c.data.image_size);
  p.set_train_fraction(c.data.train_fraction);
  p.set_seed(c.data.seed);
  const train::AugmentConfig& a = c.data.augmentation;
  pb::Augmentation* pa = p.mutable_augment();
  pa->set_hflip_probability(a.hflip_probability);
  pa->set_rotation_degrees(a.rotation_degrees);
  pa->set_brightness(a.brightness);
  pa->set_contrast(a.contrast);
  pa->set_saturation(a.saturation);
  pa->set_hue(a.hue);
  p.set_augment_validation(c.data.augment_validation);
  p.set_loader_threads(c.data.loader_threads);
  p.set_epochs(c.epochs);
  p.set_batch_size(c.batch_size);
  p.set_learning_rate(c.learning_rate);
  p.set_backbone_learning_rate(c.backbone_learning_rate);
  for (const auto& b : c.trainable_blocks) p.add_trainable_blocks(b);
  p.set_device(c.device);
  p.set_threads(c.threads);
  p.set_adaptive_threads(c.adaptive_threads);
  p.set_bf16(c.bf16);
  p.set_winograd(c.winograd);
  p.set_initial_weights(c.initial_weights);
  p.set_output_pth(c.output_pth);
  p.set_output_safetensors(c.output_safetensors);
  p.set_trial(c.trial);
  p.set_global_step_offset(c.global_step_offset);
  p.set_checkpoint_dir(c.checkpoint_dir);
  p.set_resume_from(c.resume_from);
  return p;
}

train::TrainConfig DecodeRunConfig(const pb::RunConfig& p) {
  train::TrainConfig c;
  c.kind = p.scratch() ? train::Kind::kScratch : train::Kind::kFinetune;
  c.data.dir = p.data_dir();
  c.data.exclude_classes.assign(p.exclude_classes().begin(), p.exclude_classes().end());
  c.data.image_size = p.image_size();
  c.data.train_fraction = p.train_fraction();
  c.data.seed = p.seed();
  const pb::Augmentation& pa = p.augment();
  c.data.augmentation = {pa.hflip_probability(), pa.rotation_degrees(), pa.brightness(),
                         pa.contrast(),          pa.saturation(),       pa.hue()};
  c.data.augment_validation = p.augment_validation();
  c.data.loader_threads = p.loader_threads();
  c.epochs = p.epochs();
  c.batch_size = p.batch_size();
  c.learning_rate = p.learning_rate();
  c.backbone_learning_rate = p.backbone_learning_rate();
  c.trainable_blocks.assign(p.trainable_blocks().begin(), p.trainable_blocks().end());
  c.device = p.device();
  c.threads = p.threads();
  c.adaptive_threads = p.adaptive_threads();
  c.bf16 = p.bf16();
  c.winograd = p.winograd();
  c.initial_weights = p.initial_weights();
  c.output_pth = p.output_pth();
  c.output_safetensors = p.output_safetensors();
  c.trial = p.trial();
  c.global_step_offset = p.global_step_offset();
  c.checkpoint_dir = p.checkpoint_dir();
  c.resume_from = p.resume_from();
  return c;
}

pb::Progress EncodeProgress(const RankMessage& m) {
  pb::Progress p;
  switch (m.kind) {
    case RankMessage::kDataset: {
      auto* d = p.mutable_dataset();
      for (const auto& n : m.dataset.class_names) d->add_class_names(n);
      d->set_train_images(m.dataset.train_images);
      d->set_validation_images(m.dataset.validation_images);
      break;
    }
    case RankMessage::kBatch: {
      auto* b = p.mutable_batch();
      b->set_trial(m.batch.trial);
      b->set_epoch(m.batch.epoch);
      b->set_batch(m.batch.batch);
      b->set_batches(m.batch.batches);
      b->set_global_step(m.batch.global_step);
      b->set_loss(m.batch.loss);
      b->set_images_per_second(m.batch.images_per_second);
      break;
    }
    case RankMessage::kEpoch: {
      auto* e = p.mutable_epoch();
      const auto& r = m.epoch;
      e->set_trial(r.trial);
      e->set_epoch(r.epoch);
      e->set_train_loss(r.train_loss);
      e->set_train_accuracy(r.train_accuracy);
      e->set_validation_loss(r.validation_loss);
      e->set_validation_accuracy(r.validation_accuracy);
      e->set_seconds(r.seconds);
      e->set_images_per_second(r.images_per_second);
      e->set_step_seconds(r.step_seconds);
      e->set_data_seconds(r.data_seconds);
      e->set_validation_seconds(r.validation_seconds);
      e->set_forward_seconds(r.phases.forward_seconds);
      e->set_backward_seconds(r.phases.backward_seconds);
      e->set_allreduce_seconds(r.phases.allreduce_seconds);
      e->set_update_seconds(r.phases.update_seconds);
      break;
    }
    case RankMessage::kInfo:
      p.set_info(m.text);
      break;
    case RankMessage::kWarning:
      p.set_warning(m.text);
      break;
    case RankMessage::kEvaluation: {
      auto* e = p.mutable_evaluation();
      e->set_num_classes(m.evaluation.num_classes);
      e->set_images(m.evaluation.images);
      e->set_top1_correct(m.evaluation.top1_correct);
      e->set_top5_correct(m.evaluation.top5_correct);
      for (int64_t v : m.evaluation.confusion) e->add_confusion(v);
      break;
    }
    case RankMessage::kHosts:
      for (const auto& h : m.hosts) p.mutable_hosts()->add_ranks(h);
      break;
    case RankMessage::kCheckpoint:
      break;  // checkpoints travel by Upload
  }
  return p;
}

bool DecodeProgress(const pb::Progress& p, RankMessage* m) {
  switch (p.kind_case()) {
    case pb::Progress::kDataset:
      m->kind = RankMessage::kDataset;
      m->dataset.class_names.assign(p.dataset().class_names().begin(),
                                    p.dataset().class_names().end());
      m->dataset.train_images = p.dataset().train_images();
      m->dataset.validation_images = p.dataset().validation_images();
      return true;
    case pb::Progress::kBatch: {
      const auto& b = p.batch();
      m->kind = RankMessage::kBatch;
      m->batch = {b.trial(),
                  b.epoch(),
                  b.batch(),
                  b.batches(),
                  b.global_step(),
                  b.loss(),
                  b.images_per_second()};
      return true;
    }
    case pb::Progress::kEpoch: {
      const auto& e = p.epoch();
      m->kind = RankMessage::kEpoch;
      m->epoch = {
          e.trial(),
          e.epoch(),
          e.train_loss(),
          e.train_accuracy(),
          e.validation_loss(),
          e.validation_accuracy(),
          e.seconds(),
          e.images_per_second(),
          e.step_seconds(),
          e.data_seconds(),
          e.validation_seconds(),
          {e.forward_seconds(), e.backward_seconds(), e.allreduce_seconds(), e.update_seconds()}};
      return true;
    }
    case pb::Progress::kInfo:
      m->kind = RankMessage::kInfo;
      m->text = p.info();
      return true;
    case pb::Progress::kWarning:
      m->kind = RankMessage::kWarning;
      m->text = p.warning();
      return true;
    case pb::Progress::kEvaluation: {
      const auto& e = p.evaluation();
      m->kind = RankMessage::kEvaluation;
      m->evaluation.num_classes = e.num_classes();
      m->evaluation.images = e.images();
      m->evaluation.top1_correct = e.top1_correct();
      m->evaluation.top5_correct = e.top5_correct();
      m->evaluation.confusion.assign(e.confusion().begin(), e.confusion().end());
      return true;
    }
    case pb::Progress::kHosts:
      m->kind = RankMessage::kHosts;
      m->hosts.assign(p.hosts().ranks().begin(), p.hosts().ranks().end());
      return true;
    default:
      return false;
  }
}

}  // namespace traind::launch
