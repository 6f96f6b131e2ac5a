#include "server/train/thread_governor.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <utility>

namespace traind::train {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

ThreadGovernor::ThreadGovernor(Options options) : options_(options) {
  options_.max_threads = std::max(1, options_.max_threads);
  options_.window = std::max(1, options_.window);
  options_.probe = std::max(1, options_.probe);
  options_.settle = std::max(0, options_.settle);
  options_.min_interval = std::max(1, options_.min_interval);
  options_.max_interval = std::max(options_.min_interval, options_.max_interval);
  options_.first_interval_down = std::max(1, options_.first_interval_down);
  options_.max_interval_down = std::max(options_.first_interval_down, options_.max_interval_down);
  current_ = options_.max_threads;
  settle_left_ = options_.settle;
  best_.assign(options_.max_threads + 1, std::numeric_limits<double>::infinity());
  interval_up_ = options_.min_interval;
  interval_down_ = options_.first_interval_down;
  // A job that starts beside a neighbour has never seen its best: the first
  // window ends in a try.
  since_try_ = interval_down_;
}

bool ThreadGovernor::Record(double seconds, int64_t images) {
  if (options_.max_threads <= 1 || images <= 0 || !(seconds > 0)) return false;
  if (trying_ == 0) ++since_try_;
  if (settle_left_ > 0) {
    --settle_left_;
    return false;
  }
  samples_.push_back(seconds / static_cast<double>(images));
  if (trying_ == 0) {
    double median;
    if (!TakeMedian(options_.window, &median)) return false;
    best_[current_] = std::min(best_[current_], median);
    // Slower than this count was at its best: one thread fewer may leave a
    // core to whatever took it, tried at once. Otherwise a scheduled try,
    // upwards when below the budget (the neighbour may have left).
    const bool slowed = median > options_.slow * best_[current_];
    const bool below = current_ < options_.max_threads;
    int next;
    if (slowed && current_ > 1) {
      next = current_ - 1;
    } else if (since_try_ < (below ? interval_up_ : interval_down_)) {
      return false;
    } else {
      next = below ? current_ + 1 : current_ - 1;
    }
    base_ = median;
    slowed_try_ = slowed && next < current_;
    trying_ = next;
    settle_left_ = options_.settle;
    return true;
  }
  double median;
  if (!TakeMedian(options_.probe, &median)) return false;
  best_[trying_] = std::min(best_[trying_], median);
  ++tries_;
  since_try_ = 0;
  const int tried = std::exchange(trying_, 0);
  if (median < base_ * (1 - options_.better)) {
    char text[160];
    std::snprintf(text, sizeof text,
                  "intra-op threads %d -> %d: %.1f img/s against %.1f at %d (other work shares "
                  "the cores)",
                  current_, tried, 1 / median, 1 / base_, current_);
    change_ = text;
    current_ = tried;
    ++switches_;
    interval_up_ = options_.min_interval;
    interval_down_ = options_.first_interval_down;
    return false;  // the steps already run with `tried`
  }
  // Not the thread count: what this count does now is its new normal (a
  // slowdown tried once is not tried again until it worsens).
  best_[current_] = base_;
  if (tried > current_) {
    interval_up_ = std::min(2 * interval_up_, options_.max_interval);
  } else if (!slowed_try_) {
    interval_down_ = std::min(2 * interval_down_, options_.max_interval_down);
  }
  settle_left_ = options_.settle;
  return true;
}

bool ThreadGovernor::TakeMedian(int n, double* median) {
  if (static_cast<int>(samples_.size()) < n) return false;
  *median = Median(std::exchange(samples_, {}));
  return true;
}

std::string ThreadGovernor::TakeChange() { return std::exchange(change_, std::string()); }

}  // namespace traind::train
