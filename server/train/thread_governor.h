// How many intra-op threads a job's steps use when other work shares its
// cores.
//
// Every parallel region of a step waits for its slowest thread. With one
// thread per core, a neighbour that takes a few milliseconds of a core at
// random moments (a loader, a log shipper, the daemon's own RPCs, another
// job) stalls region after region: the step loses far more than the CPU
// the neighbour took. One thread fewer leaves that core to the neighbour.
// Neither choice is right for long, so the governor measures: it times the
// steps at the current count, and when they run slower than this count's
// best (or, rarely, on a schedule) it tries a neighbouring count for a few
// steps and keeps whichever gave more images per second. Scheduled tries
// back off (the interval doubles, to a cap), so a quiet machine pays for one
// short try in `max_interval_down` steps.
//
// Results depend on the thread count in the last bits (LibTorch's and
// oneDNN's reductions split by thread), so a job whose threads adapt is not
// bit-reproducible; adaptation is a job's (or the daemon's) choice.
//
// Pure logic on step times: no LibTorch, no clock, no Abseil (the engine
// core builds with LibTorch alone). Not thread-safe: one
// job's loop owns it.
#ifndef TRAIND_SERVER_TRAIN_THREAD_GOVERNOR_H_
#define TRAIND_SERVER_TRAIN_THREAD_GOVERNOR_H_

#include <cstdint>
#include <string>
#include <vector>

namespace traind::train {

class ThreadGovernor {
 public:
  struct Options {
    int max_threads = 2;
    // Steps timed at the current count before a decision.
    int window = 8;
    // Steps timed at a tried count.
    int probe = 4;
    // Steps not timed after every change (the pool grows or shrinks).
    int settle = 1;
    // A window slower than this count's best by this factor tries one
    // thread fewer at once.
    double slow = 1.15;
    // A tried count is kept when it is faster by this fraction.
    double better = 0.05;
    // Steps between scheduled tries, doubling after each failed one: tries
    // upwards (the neighbour may have left) from `min_interval` to
    // `max_interval`; tries below the budget while the steps run at their
    // best (a job that started beside its neighbour never saw its best)
    // from `first_interval_down` to `max_interval_down`. The first window
    // always ends in a try.
    int min_interval = 16;
    int max_interval = 256;
    int first_interval_down = 256;
    int max_interval_down = 1024;
  };

  explicit ThreadGovernor(Options options);

  // The count the next step runs with (a tried count while trying).
  int threads() const { return trying_ != 0 ? trying_ : current_; }

  // The step just run with threads() threads took `seconds` for `images`
  // images. Returns true when threads() changed.
  bool Record(double seconds, int64_t images);

  // What changed the kept count since the last call, for the job's log
  // ("intra-op threads 2 -> 1: ..."); empty when nothing did.
  std::string TakeChange();

  // How many counts were tried, and how many kept (for benchmarks).
  int tries() const { return tries_; }
  int switches() const { return switches_; }

 private:
  // Once `n` samples are in: their median into `median`, and a fresh start.
  bool TakeMedian(int n, double* median);

  Options options_;
  int current_;     // the kept count
  int trying_ = 0;  // the count being tried; 0: none
  int settle_left_;
  std::vector<double> samples_;  // seconds per image, this window or try
  double base_ = 0;              // the window's median before the try
  bool slowed_try_ = false;      // the try answers a slowdown
  std::vector<double> best_;     // per count: the fastest window's median
  int interval_up_;
  int interval_down_;
  int since_try_ = 0;  // steps since the last try ended
  int tries_ = 0;
  int switches_ = 0;
  std::string change_;
};

}  // namespace traind::train

#endif  // TRAIND_SERVER_TRAIN_THREAD_GOVERNOR_H_
