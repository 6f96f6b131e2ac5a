#include "server/train/sweep.h"

#include <gtest/gtest.h>

namespace traind::train {
namespace {

TEST(SweepTest, DefaultPlanIsTheReferenceGridInTwoSharedRuns) {
  auto trials = ExpandTrials(SweepPlan{});
  ASSERT_TRUE(trials.ok()) << trials.status();
  ASSERT_EQ(trials->size(), 6u);
  const int epochs[] = {1, 3, 5, 1, 3, 5};
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ((*trials)[i].trial, static_cast<int>(i + 1));
    EXPECT_EQ((*trials)[i].epochs, epochs[i]);
    const double lr = i < 3 ? 1e-3 : 2e-3;
    EXPECT_DOUBLE_EQ((*trials)[i].learning_rate, lr);
    EXPECT_DOUBLE_EQ((*trials)[i].backbone_learning_rate, lr * 0.1);
  }
  const auto runs = GroupRuns(*trials);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0], (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(runs[1], (std::vector<size_t>{3, 4, 5}));
  int requested = 0;
  for (const auto& t : *trials) requested += t.epochs;
  EXPECT_EQ(requested, 18);  // 18 epochs as separate runs, 10 as shared runs
}

TEST(SweepTest, GridParametersMultiplyAndApplyToTheConfig) {
  SweepPlan plan;
  plan.epochs = {2};
  plan.learning_rates = {1e-3};
  plan.params = {{"batch_size", {16, 32}}, {"trainable_blocks", {1, 3}}};
  auto trials = ExpandTrials(plan);
  ASSERT_TRUE(trials.ok()) << trials.status();
  ASSERT_EQ(trials->size(), 4u);
  EXPECT_EQ(GroupRuns(*trials).size(), 4u);
  TrainConfig c;
  ASSERT_TRUE(ApplyTrial((*trials)[3], &c).ok());
  EXPECT_EQ(c.batch_size, 32);
  EXPECT_EQ(c.trainable_blocks, (std::vector<std::string>{"layer2", "layer3", "layer4"}));
  EXPECT_EQ(c.epochs, 2);
}

TEST(SweepTest, RandomSearchIsReproducibleAndInRange) {
  SweepPlan plan;
  plan.random = true;
  plan.random_trials = 12;
  plan.random_seed = 42;
  plan.params = {{"learning_rate", {}, 1e-4, 1e-2, true}, {"hue", {}, 0.0, 0.2, false},
                 {"batch_size", {16, 32, 64}}};
  auto a = ExpandTrials(plan);
  auto b = ExpandTrials(plan);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->size(), 12u);
  for (size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].AllSettings(), (*b)[i].AllSettings());
    EXPECT_GE((*a)[i].learning_rate, 1e-4);
    EXPECT_LE((*a)[i].learning_rate, 1e-2);
    EXPECT_DOUBLE_EQ((*a)[i].backbone_learning_rate, (*a)[i].learning_rate * 0.1);
    const double hue = (*a)[i].settings[1].second;
    EXPECT_GE(hue, 0.0);
    EXPECT_LE(hue, 0.2);
  }
  plan.random_seed = 43;
  auto c = ExpandTrials(plan);
  ASSERT_TRUE(c.ok());
  EXPECT_NE((*a)[0].learning_rate, (*c)[0].learning_rate);
}

TEST(SweepTest, BadSpacesAreRefusedNamingTheSetting) {
  SweepPlan plan;
  plan.params = {{"dropout", {0.1}}};
  EXPECT_NE(ExpandTrials(plan).status().message().find("sweep.dropout"), std::string::npos);
  plan.params = {{"hue", {0.9}}};
  EXPECT_NE(ExpandTrials(plan).status().message().find("sweep.hue: must be in [0, 0.5]"),
            std::string::npos)
      << ExpandTrials(plan).status();
  plan.params = {{"batch_size", {}, 8, 64}};  // a range, but not a random search
  EXPECT_FALSE(ExpandTrials(plan).ok());
  plan.params = {{"learning_rate", {}, 0, 1e-2, true}};
  plan.random = true;
  EXPECT_FALSE(ExpandTrials(plan).ok());
}

// A crafted sequence with reduction factor 2 at one rung: the first run at a
// rung always continues; each later one continues only when its loss is at
// most the median of those before it.
TEST(SweepTest, AshaStopsRunsWorseThanTheRungCutoff) {
  AshaRule asha({1, 3}, 2.0);
  EXPECT_TRUE(asha.IsRung(1));
  EXPECT_FALSE(asha.IsRung(2));
  auto d = asha.Judge(1, 1.0);
  EXPECT_TRUE(d.keep);
  EXPECT_EQ(d.earlier, 0);
  d = asha.Judge(1, 2.0);  // cutoff = 1.0
  EXPECT_FALSE(d.keep);
  EXPECT_DOUBLE_EQ(d.cutoff, 1.0);
  d = asha.Judge(1, 0.5);  // cutoff = median(1.0, 2.0) = 1.5
  EXPECT_TRUE(d.keep);
  EXPECT_DOUBLE_EQ(d.cutoff, 1.5);
  d = asha.Judge(1, 1.8);  // cutoff = median(0.5, 1.0, 2.0) = 1.0
  EXPECT_FALSE(d.keep);
  EXPECT_EQ(d.earlier, 3);
  EXPECT_TRUE(asha.Judge(3, 9.0).keep);  // rungs are judged separately

  AshaRule thirds({1}, 3.0);  // keep the best third
  thirds.Judge(1, 1.0);
  thirds.Judge(1, 2.0);
  thirds.Judge(1, 3.0);
  thirds.Judge(1, 4.0);
  d = thirds.Judge(1, 1.9);  // 33.3rd percentile of {1, 2, 3, 4} = 2.0
  EXPECT_TRUE(d.keep);
  EXPECT_DOUBLE_EQ(d.cutoff, 2.0);
}

}  // namespace
}  // namespace traind::train
