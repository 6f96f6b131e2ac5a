#include "common/spec.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

namespace traind {
namespace {

using trainer::v1::JobSpec;

JobSpec Defaulted() {
  JobSpec spec;
  spec.set_dataset("caltech101");
  ApplyDefaults(&spec);
  return spec;
}

TEST(SpecTest, DefaultsAreTheRecipe) {
  const JobSpec spec = Defaulted();
  EXPECT_EQ(spec.kind(), trainer::v1::FINETUNE);
  EXPECT_EQ(spec.epochs(), 5);
  EXPECT_EQ(spec.batch_size(), 32);
  EXPECT_EQ(spec.image_size(), 128);
  EXPECT_DOUBLE_EQ(spec.learning_rate(), 1e-3);
  EXPECT_DOUBLE_EQ(spec.backbone_learning_rate(), 1e-4);
  EXPECT_DOUBLE_EQ(spec.train_fraction(), 0.8);
  EXPECT_EQ(spec.seed(), 0u);
  ASSERT_EQ(spec.trainable_blocks_size(), 2);
  EXPECT_EQ(spec.trainable_blocks(0), "layer3");
  EXPECT_EQ(spec.trainable_blocks(1), "layer4");
  EXPECT_DOUBLE_EQ(spec.augmentation().hflip_probability(), 0.5);
  EXPECT_DOUBLE_EQ(spec.augmentation().rotation_degrees(), 10);
  EXPECT_DOUBLE_EQ(spec.augmentation().hue(), 0.1);
  EXPECT_FALSE(spec.augment_validation());
  ASSERT_EQ(spec.exclude_classes_size(), 1);
  EXPECT_EQ(spec.exclude_classes(0), "BACKGROUND_Google");
  EXPECT_EQ(spec.sweep().epochs_size(), 3);
  EXPECT_EQ(spec.sweep().learning_rates_size(), 2);
  EXPECT_DOUBLE_EQ(spec.sweep().backbone_lr_ratio(), 0.1);
  EXPECT_EQ(spec.device(), trainer::v1::auto_);
  EXPECT_EQ(spec.precision(), trainer::v1::fp32);
  EXPECT_TRUE(ValidateSpec(spec).ok());
}

TEST(SpecTest, ExplicitValuesAreKept) {
  JobSpec spec;
  spec.set_dataset("d");
  spec.set_epochs(2);
  spec.set_seed(7);
  spec.mutable_augmentation()->set_hue(0);
  ApplyDefaults(&spec);
  EXPECT_EQ(spec.epochs(), 2);
  EXPECT_EQ(spec.seed(), 7u);
  EXPECT_EQ(spec.augmentation().hue(), 0);
  EXPECT_DOUBLE_EQ(spec.augmentation().brightness(), 0.2);
}

struct BadCase {
  const char* field;
  void (*mutate)(JobSpec*);
};

TEST(SpecTest, BadValuesNameTheirField) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const BadCase cases[] = {
      {"epochs", [](JobSpec* s) { s->set_epochs(0); }},
      {"batch_size", [](JobSpec* s) { s->set_batch_size(0); }},
      {"image_size", [](JobSpec* s) { s->set_image_size(8); }},
      {"learning_rate", [](JobSpec* s) { s->set_learning_rate(-1e-3); }},
      {"learning_rate", [](JobSpec* s) { s->set_learning_rate(std::nan("")); }},
      {"backbone_learning_rate",
       [](JobSpec* s) { s->set_backbone_learning_rate(std::numeric_limits<double>::infinity()); }},
      {"train_fraction", [](JobSpec* s) { s->set_train_fraction(1.0); }},
      {"trainable_blocks", [](JobSpec* s) { s->add_trainable_blocks("layer9"); }},
      {"augmentation.hue", [](JobSpec* s) { s->mutable_augmentation()->set_hue(0.7); }},
      {"sweep.epochs", [](JobSpec* s) { s->mutable_sweep()->add_epochs(0); }},
      {"device", [](JobSpec* s) { s->set_device(static_cast<trainer::v1::Device>(9)); }},
      {"precision", [](JobSpec* s) { s->set_precision(static_cast<trainer::v1::Precision>(8)); }},
      {"threads", [](JobSpec* s) { s->set_threads(0); }},
      {"dataset", [](JobSpec* s) { s->clear_dataset(); }},
      // Ranks wait for each other: their step times cannot steer threads.
      {"adaptive_threads",
       [](JobSpec* s) {
         s->set_adaptive_threads(true);
         s->mutable_distributed()->set_world_size(2);
       }},
  };
  (void)nan;
  for (const auto& c : cases) {
    JobSpec spec = Defaulted();
    c.mutate(&spec);
    absl::Status st = ValidateSpec(spec);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(st.message().substr(0, std::string(c.field).size() + 1),
              std::string(c.field) + ":")
        << st.message();
  }
}

TEST(SpecTest, TerminalStates) {
  EXPECT_TRUE(IsTerminal(trainer::v1::SUCCEEDED));
  EXPECT_TRUE(IsTerminal(trainer::v1::FAILED));
  EXPECT_TRUE(IsTerminal(trainer::v1::CANCELLED));
  EXPECT_FALSE(IsTerminal(trainer::v1::RUNNING));
  EXPECT_FALSE(IsTerminal(trainer::v1::CANCELLING));
  EXPECT_FALSE(IsTerminal(trainer::v1::QUEUED));
}

}  // namespace
}  // namespace traind
