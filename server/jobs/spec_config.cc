#include "server/jobs/spec_config.h"


namespace traind::jobs {

using trainer::v1::JobSpec;

train::SweepPlan ToPlan(const trainer::v1::SweepGrid& g) {
  train::SweepPlan p;
  p.epochs.assign(g.epochs().begin(), g.epochs().end());
  p.learning_rates.assign(g.learning_rates().begin(), g.learning_rates().end());
  p.backbone_lr_ratio = g.backbone_lr_ratio();
  for (const auto& param : g.parameters()) {
    train::SweepParam sp;
    sp.name = param.name();
    sp.values.assign(param.values().begin(), param.values().end());
    sp.min = param.min();
    sp.max = param.max();
    sp.log = param.log();
    p.params.push_back(std::move(sp));
  }
  p.random = g.search() == trainer::v1::SweepGrid::RANDOM;
  p.random_trials = g.random_trials();
  p.random_seed = g.random_seed();
  p.asha_rungs.assign(g.asha().rungs().begin(), g.asha().rungs().end());
  p.asha_reduction_factor = g.asha().reduction_factor();
  p.parallel_runs = g.parallel_runs();
  return p;
}

train::TrainConfig ToConfig(const JobSpec& spec, const std::string& dataset_dir) {
  train::TrainConfig c;
  c.kind = spec.kind() == trainer::v1::SCRATCH ? train::Kind::kScratch
                                               : train::Kind::kFinetune;
  c.data.dir = dataset_dir;
  c.data.exclude_classes.assign(spec.exclude_classes().begin(),
                                spec.exclude_classes().end());
  c.data.image_size = spec.image_size();
  c.data.train_fraction = spec.train_fraction();
  c.data.seed = spec.seed();
  const auto& a = spec.augmentation();
  c.data.augmentation = {a.hflip_probability(), a.rotation_degrees(), a.brightness(),
                         a.contrast(), a.saturation(), a.hue()};
  c.data.augment_validation = spec.augment_validation();
  c.data.loader_threads = spec.loader_threads();
  c.epochs = spec.epochs();
  c.batch_size = spec.batch_size();
  c.learning_rate = spec.learning_rate();
  c.backbone_learning_rate = spec.backbone_learning_rate();
  // The classifier is always trained: "fc" names it; the list that reaches
  // the engine holds the backbone blocks ([fc] alone: a linear probe).
  c.trainable_blocks.clear();
  for (const auto& b : spec.trainable_blocks()) {
    if (b != "fc") c.trainable_blocks.push_back(b);
  }
  c.device = trainer::v1::Device_Name(spec.device());  // "auto", "cpu", "cuda"
  c.threads = spec.threads();
  c.adaptive_threads = spec.adaptive_threads();
  c.winograd = spec.winograd();
  c.bf16 = spec.precision() == trainer::v1::bf16;
  return c;
}


}  // namespace traind::jobs
