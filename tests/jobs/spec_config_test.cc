// The proto's defaults (common/settings.h through ApplyDefaults) reach the
// engine as the engine's own defaults, field by field: a default changed in
// one place only fails here.
#include "server/jobs/spec_config.h"

#include <gtest/gtest.h>

#include "common/settings.h"
#include "common/spec.h"

namespace traind::jobs {
namespace {

trainer::v1::JobSpec Defaulted() {
  trainer::v1::JobSpec spec;
  spec.set_dataset("d");
  ApplyDefaults(&spec);
  return spec;
}

TEST(SpecConfigTest, ProtoDefaultsAreTheEngineDefaultsFieldByField) {
  const train::TrainConfig got = ToConfig(Defaulted(), "/data/d");
  const train::TrainConfig want;  // the engine's own defaults
  EXPECT_EQ(got.kind, want.kind);
  EXPECT_EQ(got.data.dir, "/data/d");
  EXPECT_EQ(got.data.exclude_classes, want.data.exclude_classes);
  EXPECT_EQ(got.data.image_size, want.data.image_size);
  EXPECT_EQ(got.data.train_fraction, want.data.train_fraction);
  EXPECT_EQ(got.data.seed, want.data.seed);
  EXPECT_EQ(got.data.augmentation.hflip_probability, want.data.augmentation.hflip_probability);
  EXPECT_EQ(got.data.augmentation.rotation_degrees, want.data.augmentation.rotation_degrees);
  EXPECT_EQ(got.data.augmentation.brightness, want.data.augmentation.brightness);
  EXPECT_EQ(got.data.augmentation.contrast, want.data.augmentation.contrast);
  EXPECT_EQ(got.data.augmentation.saturation, want.data.augmentation.saturation);
  EXPECT_EQ(got.data.augmentation.hue, want.data.augmentation.hue);
  EXPECT_EQ(got.data.augment_validation, want.data.augment_validation);
  EXPECT_EQ(got.data.loader_threads, want.data.loader_threads);
  EXPECT_EQ(got.epochs, want.epochs);
  EXPECT_EQ(got.batch_size, want.batch_size);
  EXPECT_EQ(got.learning_rate, want.learning_rate);
  EXPECT_EQ(got.backbone_learning_rate, want.backbone_learning_rate);
  EXPECT_EQ(got.trainable_blocks, want.trainable_blocks);
  EXPECT_EQ(got.device, want.device);
  EXPECT_EQ(got.bf16, want.bf16);
}

TEST(SpecConfigTest, SweepDefaultsAreFilledAndAreThePlanDefaults) {
  const trainer::v1::JobSpec spec = Defaulted();
  // GetJob returns every default, the sweep's included.
  EXPECT_TRUE(spec.sweep().has_random_trials());
  EXPECT_TRUE(spec.sweep().has_parallel_runs());
  EXPECT_TRUE(spec.sweep().asha().has_reduction_factor());
  EXPECT_TRUE(spec.sweep().has_backbone_lr_ratio());
  const train::SweepPlan got = ToPlan(spec.sweep());
  const train::SweepPlan want;
  EXPECT_EQ(got.epochs, want.epochs);
  EXPECT_EQ(got.learning_rates, want.learning_rates);
  EXPECT_EQ(got.backbone_lr_ratio, want.backbone_lr_ratio);
  EXPECT_EQ(got.random_trials, want.random_trials);
  EXPECT_EQ(got.asha_reduction_factor, want.asha_reduction_factor);
  EXPECT_EQ(got.parallel_runs, want.parallel_runs);
  EXPECT_TRUE(got.asha_rungs.empty());  // no early stopping unless asked
}

TEST(SpecConfigTest, OneRangePerSettingForJobsAndSweeps) {
  // The ratio's range is the same whether set on the sweep or searched.
  auto spec = Defaulted();
  spec.mutable_sweep()->set_backbone_lr_ratio(50);
  EXPECT_TRUE(ValidateSpec(spec).ok());
  train::SweepPlan plan = ToPlan(spec.sweep());
  EXPECT_TRUE(train::ExpandTrials(plan).ok());
  spec.mutable_sweep()->set_backbone_lr_ratio(101);
  EXPECT_NE(ValidateSpec(spec).message().find("sweep.backbone_lr_ratio: must be in (0, 100]"),
            std::string::npos)
      << ValidateSpec(spec);
  plan.params.push_back({"backbone_lr_ratio", {101}, 0, 0, false});
  EXPECT_NE(train::ExpandTrials(plan).status().message().find(
                "sweep.backbone_lr_ratio: must be in (0, 100]"),
            std::string::npos);
}

TEST(SpecConfigTest, FcNamesTheClassifierWhichIsAlwaysTrained) {
  auto spec = Defaulted();
  spec.clear_trainable_blocks();
  spec.add_trainable_blocks("fc");
  ASSERT_TRUE(ValidateSpec(spec).ok());
  EXPECT_TRUE(ToConfig(spec, "/d").trainable_blocks.empty());  // a linear probe
  spec.add_trainable_blocks("layer4");
  EXPECT_EQ(ToConfig(spec, "/d").trainable_blocks, std::vector<std::string>{"layer4"});
}


double SettingDefault(const char* name) {
  const Setting* setting = FindSetting(name);
  EXPECT_NE(setting, nullptr) << name;
  return setting ? setting->default_value : -1;
}

// The distributed block reaches the launchers as the spec holds it, so its
// defaults are the settings table's alone (no engine-side copy to drift).
TEST(SpecConfigTest, DistributedDefaultsAreTheSettingsTables) {
  const trainer::v1::Distributed d = Defaulted().distributed();
  EXPECT_EQ(d.world_size(), SettingDefault("distributed.world_size"));
  EXPECT_EQ(d.rendezvous_timeout_seconds(),
            SettingDefault("distributed.rendezvous_timeout_seconds"));
  EXPECT_EQ(d.slurm().nodes(), SettingDefault("distributed.slurm.nodes"));
  EXPECT_EQ(d.backend(), trainer::v1::GLOO);
  EXPECT_EQ(d.launcher(), trainer::v1::LOCAL_PROCESSES);
}

}  // namespace
}  // namespace traind::jobs
