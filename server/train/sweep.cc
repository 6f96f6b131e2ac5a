#include "server/train/sweep.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/settings.h"

namespace traind::train {
namespace {

constexpr int kMaxTrials = 1000;
const char* const kBlocks[] = {"layer1", "layer2", "layer3", "layer4"};

absl::Status Invalid(const std::string& name, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("sweep.", name, ": ", why));
}

bool IsInteger(double v) { return std::isfinite(v) && v == std::floor(v); }

// Uniform in [0, 1) from 53 bits: the same numbers with any standard library.
double Unit(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

double Draw(const SweepParam& p, std::mt19937_64& rng) {
  if (!p.values.empty()) return p.values[rng() % p.values.size()];
  const double u = Unit(rng);
  if (p.log) return std::exp(std::log(p.min) + u * (std::log(p.max) - std::log(p.min)));
  return p.min + u * (p.max - p.min);
}

}  // namespace

bool TrialSpec::SameRunAs(const TrialSpec& other) const {
  return learning_rate == other.learning_rate &&
         backbone_learning_rate == other.backbone_learning_rate && settings == other.settings;
}

std::vector<std::pair<std::string, double>> TrialSpec::AllSettings() const {
  std::vector<std::pair<std::string, double>> all = {
      {"epochs", epochs},
      {"learning_rate", learning_rate},
      {"backbone_learning_rate", backbone_learning_rate}};
  for (const auto& s : settings) {
    if (s.first != "learning_rate" && s.first != "backbone_learning_rate") all.push_back(s);
  }
  return all;
}

bool IsSweepSetting(const std::string& name) {
  for (const char* n : {"learning_rate", "backbone_learning_rate", "backbone_lr_ratio",
                        "batch_size", "trainable_blocks", "hflip_probability",
                        "rotation_degrees", "brightness", "contrast", "saturation", "hue"}) {
    if (name == n) return true;
  }
  return false;
}

absl::Status ApplySetting(const std::string& name, double v, TrainConfig* c) {
  auto& a = c->data.augmentation;
  // The JobSpec field a sweep setting stands for, whose range it shares.
  struct Target {
    const char* field;
    double* into;
  };
  const Target targets[] = {
      {"learning_rate", &c->learning_rate},
      {"backbone_learning_rate", &c->backbone_learning_rate},
      {"sweep.backbone_lr_ratio", nullptr},
      {"batch_size", nullptr},
      {"augmentation.hflip_probability", &a.hflip_probability},
      {"augmentation.rotation_degrees", &a.rotation_degrees},
      {"augmentation.brightness", &a.brightness},
      {"augmentation.contrast", &a.contrast},
      {"augmentation.saturation", &a.saturation},
      {"augmentation.hue", &a.hue},
  };
  if (name == "trainable_blocks") {  // how many of the last backbone blocks
    if (!IsInteger(v)) return Invalid(name, "must be a whole number");
    if (v < 0 || v > 4) return Invalid(name, absl::StrCat("must be in [0, 4], got ", v));
    c->trainable_blocks.assign(std::end(kBlocks) - static_cast<int>(v), std::end(kBlocks));
    return absl::OkStatus();
  }
  for (const Target& t : targets) {
    const std::string field = t.field;
    if (field != name && field != "augmentation." + name && field != "sweep." + name) continue;
    if (auto st = CheckSetting(*FindSetting(field), "sweep." + name, v); !st.ok()) return st;
    if (t.into != nullptr) {
      *t.into = v;
    } else if (name == "backbone_lr_ratio") {
      c->backbone_learning_rate = c->learning_rate * v;
    } else {
      c->batch_size = static_cast<int>(v);
    }
    return absl::OkStatus();
  }
  return Invalid(name, "not a setting a sweep can search");
}

absl::Status ApplyTrial(const TrialSpec& t, TrainConfig* c) {
  c->epochs = t.epochs;
  c->learning_rate = t.learning_rate;
  c->backbone_learning_rate = t.backbone_learning_rate;
  for (const auto& [name, value] : t.settings) {
    if (name == "learning_rate" || name == "backbone_learning_rate" ||
        name == "backbone_lr_ratio") {
      continue;  // already resolved into the trial's learning rates
    }
    if (auto st = ApplySetting(name, value, c); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<TrialSpec>> ExpandTrials(const SweepPlan& plan) {
  for (const auto& [field, value] :
       {std::pair<const char*, double>{"sweep.parallel_runs", plan.parallel_runs},
        {"sweep.asha.reduction_factor", plan.asha_reduction_factor},
        {"sweep.random_trials", plan.random_trials},
        {"sweep.backbone_lr_ratio", plan.backbone_lr_ratio}}) {
    if (auto st = CheckSetting(*FindSetting(field), field, value); !st.ok()) return st;
  }
  for (size_t i = 0; i < plan.asha_rungs.size(); ++i) {
    if (plan.asha_rungs[i] < 1 || (i > 0 && plan.asha_rungs[i] <= plan.asha_rungs[i - 1])) {
      return Invalid("asha.rungs", "must be increasing epochs >= 1");
    }
  }
  if (plan.epochs.empty()) return Invalid("epochs", "needs at least one value");
  if (plan.learning_rates.empty()) return Invalid("learning_rates", "needs at least one value");
  for (int e : plan.epochs) {
    if (e < 1 || e > 10000) return Invalid("epochs", absl::StrCat("must be in [1, 10000], got ", e));
  }
  TrainConfig probe;
  for (double lr : plan.learning_rates) {
    if (auto st = ApplySetting("learning_rate", lr, &probe); !st.ok()) {
      return Invalid("learning_rates", std::string(st.message()));
    }
  }
  for (const auto& p : plan.params) {
    if (!IsSweepSetting(p.name)) return Invalid(p.name, "not a setting a sweep can search");
    if (p.name == "epochs") return Invalid(p.name, "list epoch counts in sweep.epochs");
    for (double v : p.values) {
      if (auto st = ApplySetting(p.name, v, &probe); !st.ok()) return st;
    }
    if (p.values.empty()) {
      if (!plan.random) return Invalid(p.name, "a grid needs values");
      if (!(p.min <= p.max)) return Invalid(p.name, "min must not exceed max");
      if (p.log && p.min <= 0) return Invalid(p.name, "a log range needs min > 0");
      for (double v : {p.min, p.max}) {
        if (auto st = ApplySetting(p.name, v, &probe); !st.ok()) return st;
      }
    }
  }

  auto resolve = [&plan](TrialSpec t) {
    double ratio = plan.backbone_lr_ratio;
    std::optional<double> backbone;
    for (const auto& [name, v] : t.settings) {
      if (name == "learning_rate") t.learning_rate = v;
      if (name == "backbone_lr_ratio") ratio = v;
      if (name == "backbone_learning_rate") backbone = v;
    }
    t.backbone_learning_rate = backbone ? *backbone : t.learning_rate * ratio;
    return t;
  };

  std::vector<TrialSpec> trials;
  if (plan.random) {
    if (plan.random_trials < 1 || plan.random_trials > kMaxTrials) {
      return Invalid("random_trials", absl::StrCat("must be in [1, ", kMaxTrials, "]"));
    }
    std::mt19937_64 rng(plan.random_seed);
    for (int i = 0; i < plan.random_trials; ++i) {
      TrialSpec t;
      t.epochs = plan.epochs[rng() % plan.epochs.size()];
      t.learning_rate = plan.learning_rates[rng() % plan.learning_rates.size()];
      for (const auto& p : plan.params) {
        double v = Draw(p, rng);
        if (p.name == "batch_size" || p.name == "trainable_blocks") v = std::round(v);
        t.settings.emplace_back(p.name, v);
      }
      trials.push_back(resolve(std::move(t)));
    }
  } else {
    int64_t count = static_cast<int64_t>(plan.epochs.size()) *
                    static_cast<int64_t>(plan.learning_rates.size());
    for (const auto& p : plan.params) count *= static_cast<int64_t>(p.values.size());
    if (count > kMaxTrials) {
      return Invalid("parameters", absl::StrCat("the grid has ", count, " trials, more than ",
                                                kMaxTrials));
    }
    // Odometer over the parameters, then learning rates, then epochs
    // (fastest), so that trials sharing a run are neighbours.
    std::vector<size_t> at(plan.params.size(), 0);
    while (true) {
      for (double lr : plan.learning_rates) {
        for (int e : plan.epochs) {
          TrialSpec t;
          t.epochs = e;
          t.learning_rate = lr;
          for (size_t k = 0; k < plan.params.size(); ++k) {
            t.settings.emplace_back(plan.params[k].name, plan.params[k].values[at[k]]);
          }
          trials.push_back(resolve(std::move(t)));
        }
      }
      size_t k = plan.params.size();
      while (k > 0 && ++at[k - 1] == plan.params[k - 1].values.size()) at[--k] = 0;
      if (k == 0) break;
    }
  }
  for (size_t i = 0; i < trials.size(); ++i) {
    trials[i].trial = static_cast<int>(i + 1);
    TrainConfig c;
    if (auto st = ApplyTrial(trials[i], &c); !st.ok()) return st;
  }
  return trials;
}

std::vector<std::vector<size_t>> GroupRuns(const std::vector<TrialSpec>& trials) {
  std::vector<std::vector<size_t>> groups;
  for (size_t i = 0; i < trials.size(); ++i) {
    auto g = std::find_if(groups.begin(), groups.end(), [&](const std::vector<size_t>& g) {
      return trials[g.front()].SameRunAs(trials[i]);
    });
    if (g == groups.end()) {
      groups.push_back({i});
    } else {
      g->push_back(i);
    }
  }
  for (auto& g : groups) {
    std::stable_sort(g.begin(), g.end(),
                     [&](size_t a, size_t b) { return trials[a].epochs < trials[b].epochs; });
  }
  return groups;
}

AshaRule::AshaRule(std::vector<int> rungs, double reduction_factor)
    : rungs_(std::move(rungs)), reduction_factor_(reduction_factor) {}

bool AshaRule::IsRung(int epoch) const {
  return std::find(rungs_.begin(), rungs_.end(), epoch) != rungs_.end();
}

AshaRule::Decision AshaRule::Judge(int epoch, double loss) {
  Decision d;
  std::vector<double>& seen = recorded_[epoch];
  d.earlier = static_cast<int>(seen.size());
  if (!seen.empty()) {
    // numpy.percentile's linear interpolation.
    std::vector<double> sorted = seen;
    std::sort(sorted.begin(), sorted.end());
    const double pos = (sorted.size() - 1) * (1.0 / reduction_factor_);
    const size_t lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, sorted.size() - 1);
    d.cutoff = sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
    d.keep = loss <= d.cutoff;
  }
  seen.push_back(loss);
  return d;
}

}  // namespace traind::train
