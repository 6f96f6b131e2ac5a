// The one path a job's configuration takes to its ranks carries every
// field: each set to a value that is not its default, every field of the
// message is then set, and the trip back and forth changes nothing.
#include "server/launch/rank_codec.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace traind::launch {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;

// Every TrainConfig field away from its default (rank_codec.cc counts the
// fields: a new one fails to compile there until it is carried, and fails
// here until it is set below).
train::TrainConfig Everything() {
  train::TrainConfig c;
  c.kind = train::Kind::kScratch;
  c.data.dir = "/data/set";
  c.data.exclude_classes = {"x", "y"};
  c.data.image_size = 96;
  c.data.train_fraction = 0.7;
  c.data.seed = 42;
  c.data.augmentation = {0.25, 5, 0.1, 0.3, 0.4, 0.05};
  c.data.augment_validation = true;
  c.data.loader_threads = 3;
  c.epochs = 7;
  c.batch_size = 48;
  c.learning_rate = 3e-3;
  c.backbone_learning_rate = 2e-4;
  c.trainable_blocks = {"layer2", "layer3", "layer4"};
  c.device = "cpu";
  c.threads = 6;
  c.adaptive_threads = true;
  c.bf16 = true;
  c.winograd = true;
  c.initial_weights = "/w/start.pth";
  c.output_pth = "/s/jobs/j/weights.pth";
  c.output_safetensors = "/s/jobs/j/weights.safetensors";
  c.trial = 4;
  c.global_step_offset = 1234;
  c.checkpoint_dir = "/s/jobs/j/checkpoints";
  c.resume_from = "/s/jobs/j/checkpoints/epoch-2.safetensors";
  return c;
}

// The fields of `m` (recursively) left at their defaults, by name.
void Unset(const Message& m, const std::string& prefix, std::vector<std::string>* out) {
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    const std::string name = prefix + f->name();
    if (f->is_repeated()) {
      if (r->FieldSize(m, f) == 0) out->push_back(name);
    } else if (!r->HasField(m, f)) {  // proto3: set means not the default
      out->push_back(name);
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      Unset(r->GetMessage(m, f), name + ".", out);
    }
  }
}

TEST(RankCodecTest, EveryFieldOfTheConfigMakesTheRoundTrip) {
  const pb::RunConfig sent = EncodeRunConfig(Everything());
  std::vector<std::string> unset;
  Unset(sent, "", &unset);
  EXPECT_TRUE(unset.empty()) << "not carried: " << ::testing::PrintToString(unset);
  const pb::RunConfig again = EncodeRunConfig(DecodeRunConfig(sent));
  std::string diff;
  google::protobuf::util::MessageDifferencer differ;
  differ.ReportDifferencesToString(&diff);
  EXPECT_TRUE(differ.Compare(sent, again)) << "lost on the way back: " << diff;
}

TEST(RankCodecTest, DefaultsArriveAsDefaults) {
  const train::TrainConfig back = DecodeRunConfig(EncodeRunConfig(train::TrainConfig()));
  const train::TrainConfig want;
  EXPECT_EQ(back.data.exclude_classes, want.data.exclude_classes);
  EXPECT_EQ(back.data.augmentation.hue, want.data.augmentation.hue);
  EXPECT_EQ(back.trainable_blocks, want.trainable_blocks);
  EXPECT_EQ(back.epochs, want.epochs);
  EXPECT_TRUE(back.initial_weights.empty());
  EXPECT_TRUE(back.resume_from.empty());
}

TEST(RankCodecTest, ProgressMessagesMakeTheRoundTrip) {
  RankMessage m;
  m.kind = RankMessage::kEpoch;
  m.epoch = {0, 3, 1.5, 0.5, 1.25, 0.625, 10, 200, 7, 2, 1, {3, 2.5, 0.75, 0.25}};
  RankMessage back;
  ASSERT_TRUE(DecodeProgress(EncodeProgress(m), &back));
  EXPECT_EQ(back.kind, RankMessage::kEpoch);
  EXPECT_EQ(back.epoch.epoch, 3);
  EXPECT_EQ(back.epoch.validation_accuracy, 0.625);
  EXPECT_EQ(back.epoch.validation_seconds, 1);
  EXPECT_EQ(back.epoch.phases.forward_seconds, 3);
  EXPECT_EQ(back.epoch.phases.backward_seconds, 2.5);
  EXPECT_EQ(back.epoch.phases.allreduce_seconds, 0.75);
  EXPECT_EQ(back.epoch.phases.update_seconds, 0.25);
  m = RankMessage();
  m.kind = RankMessage::kHosts;
  m.hosts = {"a (10.0.0.1)", "b (10.0.0.2)"};
  ASSERT_TRUE(DecodeProgress(EncodeProgress(m), &back));
  EXPECT_EQ(back.hosts, m.hosts);
  EXPECT_FALSE(DecodeProgress(pb::Progress(), &back));  // no kind
}

}  // namespace
}  // namespace traind::launch
