#include "server/train/checkpoint.h"

#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/train/fused_adam.h"
#include "server/train/weights.h"

namespace traind::train {
namespace {

constexpr int64_t kFormatVersion = 1;

torch::Tensor Int(int64_t v) { return torch::tensor({v}, torch::kLong); }
torch::Tensor Real(double v) { return torch::tensor({v}, torch::kDouble); }

std::string AdamName(size_t group, size_t index, const char* field) {
  return absl::StrCat("adam/", group, "/", index, "/", field);
}

absl::Status Damaged(const std::string& what) {
  return absl::DataLossError(absl::StrCat("checkpoint: ", what));
}

}  // namespace

absl::StatusOr<std::string> SerializeCheckpoint(ResNet& model, torch::optim::Adam& optimizer,
                                                const RunPosition& pos) {
  NamedTensors out;
  auto cpu = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU).contiguous(); };
  for (auto& [name, t] : StateDict(*model)) out.emplace_back("model/" + name, cpu(t));
  const auto& groups = optimizer.param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t i = 0; i < groups[g].params().size(); ++i) {
      auto it = optimizer.state().find(OptimizerStateKey(groups[g].params()[i]));
      if (it == optimizer.state().end()) continue;  // not stepped yet
      auto& s = static_cast<torch::optim::AdamParamState&>(*it->second);
      out.emplace_back(AdamName(g, i, "step"), Int(s.step()));
      out.emplace_back(AdamName(g, i, "exp_avg"), cpu(s.exp_avg()));
      out.emplace_back(AdamName(g, i, "exp_avg_sq"), cpu(s.exp_avg_sq()));
    }
  }
  out.emplace_back("state/format", Int(kFormatVersion));
  out.emplace_back("state/epoch", Int(pos.epoch));
  out.emplace_back("state/next_batch", Int(pos.next_batch));
  out.emplace_back("state/global_step", Int(pos.global_step));
  out.emplace_back("state/correct", Int(pos.correct));
  out.emplace_back("state/count", Int(pos.count));
  out.emplace_back("state/loss_sum", Real(pos.loss_sum));
  out.emplace_back("state/elapsed_seconds", Real(pos.elapsed_seconds));
  out.emplace_back("state/step_seconds", Real(pos.step_seconds));
  out.emplace_back("state/data_seconds", Real(pos.data_seconds));
  out.emplace_back("state/forward_seconds", Real(pos.phases.forward_seconds));
  out.emplace_back("state/backward_seconds", Real(pos.phases.backward_seconds));
  out.emplace_back("state/allreduce_seconds", Real(pos.phases.allreduce_seconds));
  out.emplace_back("state/update_seconds", Real(pos.phases.update_seconds));
  out.emplace_back("state/order_rng", cpu(pos.order_rng));
  // The epoch's order, once drawn: mid-epoch, or interrupted before its
  // first batch (the generator's state is then past the draw).
  if (!pos.order.empty()) {
    out.emplace_back("state/order",
                     torch::tensor(at::ArrayRef<int64_t>(pos.order), torch::kLong));
  }
  return SerializeSafetensors(out);
}

absl::StatusOr<RunPosition> RestoreCheckpoint(const std::string& bytes, ResNet& model,
                                              torch::optim::Adam& optimizer) {
  auto parsed = ParseSafetensors(bytes);
  if (!parsed.ok()) return Damaged(std::string(parsed.status().message()));
  std::map<std::string, torch::Tensor> named(parsed->begin(), parsed->end());
  auto take = [&](const std::string& name, torch::ScalarType type,
                  int64_t numel) -> absl::StatusOr<torch::Tensor> {
    auto it = named.find(name);
    if (it == named.end()) return Damaged(absl::StrCat("no ", name));
    if (it->second.scalar_type() != type || (numel >= 0 && it->second.numel() != numel)) {
      return Damaged(absl::StrCat(name, " has the wrong type or size"));
    }
    return it->second;
  };
  auto integer = [&](const char* name) -> absl::StatusOr<int64_t> {
    auto t = take(absl::StrCat("state/", name), torch::kLong, 1);
    if (!t.ok()) return t.status();
    return t->item<int64_t>();
  };
  auto real = [&](const char* name) -> absl::StatusOr<double> {
    auto t = take(absl::StrCat("state/", name), torch::kDouble, 1);
    if (!t.ok()) return t.status();
    return t->item<double>();
  };

  auto version = integer("format");
  if (!version.ok()) return version.status();
  if (*version != kFormatVersion) {
    return Damaged(absl::StrCat("format version ", *version, ", this traind reads ",
                                kFormatVersion));
  }

  NamedTensors model_tensors;
  for (auto& [name, t] : named) {
    if (name.rfind("model/", 0) == 0) model_tensors.emplace_back(name.substr(6), t);
  }
  if (auto st = CopyIntoModule(model_tensors, *model); !st.ok()) {
    return Damaged(absl::StrCat("model: ", st.message()));
  }

  optimizer.state().clear();
  const auto& groups = optimizer.param_groups();
  size_t restored = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t i = 0; i < groups[g].params().size(); ++i) {
      const torch::Tensor& p = groups[g].params()[i];
      if (!named.count(AdamName(g, i, "step"))) continue;
      auto step = take(AdamName(g, i, "step"), torch::kLong, 1);
      auto avg = take(AdamName(g, i, "exp_avg"), torch::kFloat, p.numel());
      auto avg_sq = take(AdamName(g, i, "exp_avg_sq"), torch::kFloat, p.numel());
      for (const auto* r : {&step, &avg, &avg_sq}) {
        if (!r->ok()) return r->status();
      }
      auto state = std::make_unique<torch::optim::AdamParamState>();
      state->step(step->item<int64_t>());
      // Moments take the parameter's device and memory format.
      state->exp_avg(torch::empty_like(p).copy_(avg->view(p.sizes())));
      state->exp_avg_sq(torch::empty_like(p).copy_(avg_sq->view(p.sizes())));
      optimizer.state()[OptimizerStateKey(p)] = std::move(state);
      ++restored;
    }
  }
  size_t stored = 0;
  for (auto& [name, t] : named) {
    if (name.rfind("adam/", 0) == 0 && name.size() > 5 &&
        name.compare(name.size() - 5, 5, "/step") == 0) {
      ++stored;
    }
  }
  if (stored != restored) {
    return Damaged(absl::StrCat("optimizer state for ", stored,
                                " parameters does not fit this recipe's optimizer"));
  }

  RunPosition pos;
  auto epoch = integer("epoch");
  auto next_batch = integer("next_batch");
  auto global_step = integer("global_step");
  auto correct = integer("correct");
  auto count = integer("count");
  auto loss_sum = real("loss_sum");
  auto elapsed = real("elapsed_seconds");
  auto step_seconds = real("step_seconds");
  auto data_seconds = real("data_seconds");
  for (const auto* r : {&epoch, &next_batch, &global_step, &correct, &count}) {
    if (!r->ok()) return r->status();
  }
  for (const auto* r : {&loss_sum, &elapsed, &step_seconds, &data_seconds}) {
    if (!r->ok()) return r->status();
  }
  pos.epoch = static_cast<int>(*epoch);
  pos.next_batch = static_cast<int>(*next_batch);
  pos.global_step = *global_step;
  pos.correct = *correct;
  pos.count = *count;
  pos.loss_sum = *loss_sum;
  pos.elapsed_seconds = *elapsed;
  pos.step_seconds = *step_seconds;
  pos.data_seconds = *data_seconds;
  // The step phases came later than the format: a checkpoint without them
  // resumes with their sums from 0.
  for (auto [name, field] : {std::pair{"forward_seconds", &pos.phases.forward_seconds},
                             std::pair{"backward_seconds", &pos.phases.backward_seconds},
                             std::pair{"allreduce_seconds", &pos.phases.allreduce_seconds},
                             std::pair{"update_seconds", &pos.phases.update_seconds}}) {
    if (!named.count(absl::StrCat("state/", name))) continue;
    auto value = real(name);
    if (!value.ok()) return value.status();
    *field = *value;
  }
  auto rng = take("state/order_rng", torch::kByte, -1);
  if (!rng.ok()) return rng.status();
  pos.order_rng = *rng;
  if (pos.epoch < 1 || pos.next_batch < 0) return Damaged("position out of range");
  // Required mid-epoch; at batch 0 only when the epoch's order was drawn
  // (checkpoints from the end of an epoch have none).
  if (pos.next_batch > 0 || named.count("state/order")) {
    auto order = take("state/order", torch::kLong, -1);
    if (!order.ok()) return order.status();
    pos.order.assign(order->data_ptr<int64_t>(), order->data_ptr<int64_t>() + order->numel());
  }
  return pos;
}

}  // namespace traind::train
