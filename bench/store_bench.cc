// store_bench [--events N] [--dir DIR]
// What persisting a job's events costs: per-batch event inserts into the
// SQLite store (WAL, synchronous=NORMAL, one transaction each, as traind
// does), against building the same events without storing them, and a
// durable (synchronous=FULL) job update as state changes and checkpoint
// records do. Prints microseconds per operation.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "bench/flags.h"
#include "server/jobs/store.h"

namespace {

using traind::bench::Arg;

trainer::v1::JobEvent BatchEvent(int64_t seq) {
  trainer::v1::JobEvent e;
  e.set_seq(seq);
  e.set_time_ms(1700000000000 + seq);
  auto* b = e.mutable_batch();
  b->set_epoch(1 + static_cast<int>(seq / 217));
  b->set_batch(static_cast<int>(seq % 217));
  b->set_batches(217);
  b->set_global_step(seq);
  b->set_loss(2.5 - seq * 1e-4);
  b->set_images_per_second(120.5);
  b->set_attempt(1);
  return e;
}

double Micros(std::chrono::steady_clock::time_point since, int n) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - since)
             .count() / n;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = Arg(argc, argv, "--events", 5000);
  const auto dir = std::filesystem::temp_directory_path() / "traind-store-bench";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto store = traind::jobs::Store::Open((dir / "traind.db").string());
  if (!store.ok()) {
    std::fprintf(stderr, "store_bench: %s\n", std::string(store.status().message()).c_str());
    return 1;
  }
  traind::jobs::StoredJob job;
  job.index = 1;
  job.job.set_id("job-000001");
  (void)(*store)->InsertJob(job);

  size_t bytes = 0;
  auto start = std::chrono::steady_clock::now();
  for (int i = 1; i <= n; ++i) bytes += BatchEvent(i).SerializeAsString().size();
  const double build_us = Micros(start, n);

  start = std::chrono::steady_clock::now();
  for (int i = 1; i <= n; ++i) {
    if (!(*store)->AppendEvent("job-000001", BatchEvent(i)).ok()) return 1;
  }
  const double insert_us = Micros(start, n);

  const int updates = std::max(1, n / 50);
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < updates; ++i) {
    job.job.set_last_seq(i);
    if (!(*store)->UpdateJob(job.job).ok()) return 1;
  }
  const double durable_us = Micros(start, updates);

  std::printf("events: %d batch events of %.0f bytes\n", n, static_cast<double>(bytes) / n);
  std::printf("build only (no persistence): %8.1f us/event\n", build_us);
  std::printf("build + insert (WAL, NORMAL): %8.1f us/event\n", insert_us);
  std::printf("durable job update (FULL):    %8.1f us/update\n", durable_us);
  std::printf("per training batch of ~270 ms (fine-tune, 32 images at ~120 img/s): %.4f %%\n",
              100.0 * (insert_us - build_us) / 270000.0);
  std::filesystem::remove_all(dir);
  return 0;
}
