// weights, plot, report, classify, tensorboard, demo-data.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include <opencv2/imgcodecs.hpp>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/charts.h"
#include "client/commands.h"
#include "client/demo_data.h"
#include "client/flags.h"
#include "client/render.h"
#include "common/file_util.h"
#include "common/sha256.h"

namespace traind::client {
namespace {

using Stub = Connection::Stub;

// The job's events so far (replayed up to the last one when asked).
absl::StatusOr<std::vector<trainer::v1::JobEvent>> History(Connection& c, const std::string& id,
                                                           int64_t last_seq) {
  std::vector<trainer::v1::JobEvent> events;
  if (last_seq == 0) return events;
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  trainer::v1::StreamMetricsRequest req;
  req.set_job_id(id);
  auto reader = c.stub().StreamMetrics(&ctx, req);
  trainer::v1::StreamMetricsResponse msg;
  while (reader->Read(&msg)) {
    events.push_back(msg.event());
    if (msg.event().seq() >= last_seq) {
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status st = reader->Finish();
  if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED) return RpcError("plot " + id, st);
  return events;
}

absl::Status WriteImage(const std::string& path, const cv::Mat& img) {
  bool ok = false;
  try {
    ok = cv::imwrite(path, img);
  } catch (const cv::Exception& e) {
    return UsageError(absl::StrCat("cannot write ", path, ": ", e.err));
  }
  if (!ok) return UsageError(absl::StrCat("cannot write ", path, " (use a .png name in a writable folder)"));
  return absl::OkStatus();
}

// What an interrupted download left: FILE.part, fed into `digest`, and
// beside it the digest the server announced for the whole file. Returns the
// part's size, 0 (and an empty `expected_sha256`) when there is nothing
// usable to continue.
int64_t ReadPartial(const std::string& part, const std::string& part_sha,
                    std::string* expected_sha256, Sha256* digest) {
  std::ifstream meta(part_sha);
  std::ifstream have(part, std::ios::binary);
  expected_sha256->clear();
  if (!meta || !have || !(meta >> *expected_sha256) || expected_sha256->size() != 64) {
    expected_sha256->clear();
    return 0;
  }
  int64_t bytes = 0;
  std::string buf(1 << 20, '\0');
  while (have.read(buf.data(), static_cast<std::streamsize>(buf.size())) || have.gcount()) {
    digest->Update(absl::string_view(buf.data(), static_cast<size_t>(have.gcount())));
    bytes += have.gcount();
  }
  return bytes;
}

}  // namespace

absl::Status Weights(Connection& c, const std::string& id) {
  const std::string out = absl::GetFlag(FLAGS_o);
  if (out.empty()) return UsageError("weights: -o FILE is required");
  trainer::v1::GetWeightsRequest req;
  req.set_job_id(id);
  req.set_trial(absl::GetFlag(FLAGS_trial));
  const std::string format = absl::AsciiStrToLower(absl::GetFlag(FLAGS_format));
  if (format == "pth") {
    req.set_format(trainer::v1::PTH);
  } else if (format == "safetensors") {
    req.set_format(trainer::v1::SAFETENSORS);
  } else {
    return UsageError("--format: must be pth or safetensors");
  }
  // An interrupted download leaves FILE.part and, beside it, the digest the
  // server announced; the next run continues from the part's end if the
  // server still has the same file, and starts over otherwise.
  const std::string part = out + ".part";
  const std::string part_sha = out + ".part.sha256";
  auto cleanup = [&] {
    std::remove(part.c_str());
    std::remove(part_sha.c_str());
  };
  std::string expected_sha;
  Sha256 sha;
  int64_t received = ReadPartial(part, part_sha, &expected_sha, &sha);
  const int64_t resumed_at = received;
  req.set_offset(received);
  std::ofstream file(part, std::ios::binary | (received > 0 ? std::ios::app : std::ios::trunc));
  if (!file) return UsageError(absl::StrCat("cannot write ", part));
  grpc::ClientContext ctx;
  c.Prepare(&ctx);
  auto reader = c.stub().GetWeights(&ctx, req);
  trainer::v1::GetWeightsResponse msg;
  trainer::v1::WeightsHeader header;
  bool have_header = false;
  bool stale = false;
  while (reader->Read(&msg)) {
    if (msg.has_header()) {
      header = msg.header();
      have_header = true;
      if (!expected_sha.empty() && header.sha256() != expected_sha) {
        stale = true;  // the job's weights changed since the part was written
        ctx.TryCancel();
        break;
      }
      std::ofstream(part_sha, std::ios::trunc) << header.sha256() << "\n";
    }
    if (!msg.chunk().empty()) {
      if (msg.offset() != received) {
        ctx.TryCancel();
        reader->Finish();
        return UsageError(
            absl::StrCat("weights: chunk at offset ", msg.offset(), ", expected ", received));
      }
      file.write(msg.chunk().data(), static_cast<std::streamsize>(msg.chunk().size()));
      sha.Update(msg.chunk());
      received += static_cast<int64_t>(msg.chunk().size());
    }
  }
  grpc::Status st = reader->Finish();
  file.close();
  if (stale) {
    cleanup();
    return Weights(c, id);  // once more, from the start
  }
  if (!st.ok()) {
    if (received == resumed_at) {
      if (received == 0) cleanup();
    } else {
      std::fprintf(stderr,
                   "trainctl: weights: download interrupted at %lld of %lld bytes; run the same "
                   "command again to continue\n",
                   static_cast<long long>(received), static_cast<long long>(header.total_size()));
    }
    return RpcError("weights " + id, st);
  }
  if (!file || !have_header) {
    cleanup();
    return UsageError(
        absl::StrCat("weights: ", have_header ? "cannot write " + part : "no header received"));
  }
  const std::string digest = sha.HexDigest();
  if (received != header.total_size() || digest != header.sha256()) {
    cleanup();
    return UsageError(absl::StrCat("weights: download corrupt (", received, " of ", header.total_size(),
                      " bytes, sha256 ", digest, " instead of ", header.sha256(), ")"));
  }
  std::remove(part_sha.c_str());
  if (std::rename(part.c_str(), out.c_str()) != 0) {
    cleanup();
    return UsageError(absl::StrCat("cannot rename ", part, " to ", out));
  }
  if (JsonOutput()) {
    PrintJson(nlohmann::json{
        {"path", out}, {"size", received}, {"sha256", digest}, {"format", format}});
  } else {
    std::printf("wrote %s (%.1f MB, sha256 %s, verified%s)\n", out.c_str(), received / 1e6,
                digest.c_str(),
                resumed_at > 0
                    ? absl::StrCat("; continued from byte ", resumed_at).c_str()
                    : "");
  }
  return absl::OkStatus();
}

absl::Status Plot(Connection& c, const std::string& id) {
  const std::string out = absl::GetFlag(FLAGS_o);
  if (out.empty()) return UsageError("plot: -o FILE.png is required");
  auto got = c.GetJob(id);
  if (!got.ok()) return got.status();
  const trainer::v1::Job& job = *got;
  auto history = History(c, id, job.last_seq());
  if (!history.ok()) return history.status();
  const auto& events = *history;
  std::vector<Panel> panels(2);
  panels[0] = {"Loss", "epoch", "cross-entropy (nats)", {}};
  panels[1] = {"Accuracy", "epoch", "accuracy (%)", {}};
  if (job.spec().kind() == trainer::v1::SWEEP) {
    // One validation line per sweep run (trials sharing a run share its line).
    std::map<int, std::map<int, trainer::v1::EpochMetrics>> runs;
    for (const auto& e : events) {
      if (e.has_epoch()) runs[e.epoch().trial()][e.epoch().epoch()] = e.epoch();
    }
    size_t i = 0;
    for (const auto& [run, epochs] : runs) {
      Series loss{absl::StrCat("trial ", run, " val"), {}, PaletteColor(i), 2, true};
      Series acc = loss;
      for (const auto& [epoch, m] : epochs) {
        loss.points.emplace_back(epoch, m.validation_loss());
        acc.points.emplace_back(epoch, 100 * m.validation_accuracy());
      }
      panels[0].series.push_back(loss);
      panels[1].series.push_back(acc);
      ++i;
    }
    panels[0].title = "Validation loss per sweep run";
    panels[1].title = "Validation accuracy per sweep run";
  } else {
    // Later attempts supersede earlier points of the same step or epoch.
    std::map<int64_t, std::pair<double, double>> batches;  // step -> (x, loss)
    std::map<int, trainer::v1::EpochMetrics> epochs;
    for (const auto& e : events) {
      if (e.has_batch() && e.batch().batches() > 0) {
        const auto& b = e.batch();
        batches[b.global_step()] = {b.epoch() - 1 + (b.batch() + 1.0) / b.batches(), b.loss()};
      }
      if (e.has_epoch()) epochs[e.epoch().epoch()] = e.epoch();
    }
    Series raw{"batch loss", {}, cv::Scalar(230, 200, 170), 1, false};
    Series smooth{"batch loss (smoothed)", {}, PaletteColor(0), 2, false};
    double ema = 0;
    bool first = true;
    for (const auto& [step, point] : batches) {
      raw.points.push_back(point);
      ema = first ? point.second : 0.9 * ema + 0.1 * point.second;
      first = false;
      smooth.points.emplace_back(point.first, ema);
    }
    Series train_loss{"train loss (epoch)", {}, PaletteColor(1), 2, true};
    Series val_loss{"validation loss", {}, PaletteColor(2), 2, true};
    Series train_acc{"train accuracy", {}, PaletteColor(1), 2, true};
    Series val_acc{"validation accuracy", {}, PaletteColor(2), 2, true};
    for (const auto& [epoch, m] : epochs) {
      train_loss.points.emplace_back(epoch, m.train_loss());
      val_loss.points.emplace_back(epoch, m.validation_loss());
      train_acc.points.emplace_back(epoch, 100 * m.train_accuracy());
      val_acc.points.emplace_back(epoch, 100 * m.validation_accuracy());
    }
    panels[0].series = {raw, smooth, train_loss, val_loss};
    panels[1].series = {train_acc, val_acc};
  }
  for (auto& p : panels) p.title = absl::StrCat(id, ": ", p.title);
  const cv::Mat img = Chart(panels).Render();
  if (auto st = WriteImage(out, img); !st.ok()) return st;
  if (JsonOutput()) {
    PrintJson(nlohmann::json{{"path", out}, {"width", img.cols}, {"height", img.rows}});
  } else {
    std::printf("wrote %s (%dx%d)\n", out.c_str(), img.cols, img.rows);
  }
  return absl::OkStatus();
}

absl::Status Report(Connection& c, const std::string& id) {
  auto got = c.GetJob(id);
  if (!got.ok()) return got.status();
  const trainer::v1::Job& job = *got;
  if (!job.has_evaluation()) {
    return JobEndedError(absl::StrCat("report: job ", id, " has no evaluation yet (it is ",
                      StateName(job.state()), "; reports exist once a non-sweep job SUCCEEDED)"));
  }
  const auto& ev = job.evaluation();
  const std::string confusion = absl::GetFlag(FLAGS_confusion);
  if (!confusion.empty()) {
    const int n = ev.classes_size();
    if (ev.confusion_size() != n * n) {
      return UsageError("report: the stored confusion matrix is malformed");
    }
    std::vector<int64_t> counts(ev.confusion().begin(), ev.confusion().end());
    std::vector<std::string> names;
    for (const auto& c : ev.classes()) names.push_back(c.name());
    if (auto st = WriteImage(confusion, DrawConfusion(counts, n, names)); !st.ok()) return st;
  }
  if (JsonOutput()) {
    PrintJson(job);
    return absl::OkStatus();
  }
  std::printf("job        %s (%s, %d classes)\n", id.c_str(), job.spec().dataset().c_str(),
              ev.classes_size());
  std::printf("top-1      %s of %lld validation images\n", Pct(ev.top1_accuracy()).c_str(),
              static_cast<long long>(ev.images()));
  std::printf("top-5      %s\n", Pct(ev.top5_accuracy()).c_str());
  std::vector<trainer::v1::ClassMetrics> worst(ev.classes().begin(), ev.classes().end());
  std::stable_sort(worst.begin(), worst.end(), [](const auto& a, const auto& b) {
    return a.recall() < b.recall();
  });
  worst.resize(std::min<size_t>(10, worst.size()));
  std::printf("\nworst classes (by accuracy on their validation images)\n");
  std::printf("%-28s %8s %9s %10s\n", "class", "images", "accuracy", "precision");
  for (const auto& c : worst) {
    std::printf("%-28s %8lld %9s %10s\n", c.name().c_str(), static_cast<long long>(c.support()),
                Pct(c.recall()).c_str(), Pct(c.precision()).c_str());
  }
  if (!confusion.empty()) std::printf("\nwrote %s\n", confusion.c_str());
  return absl::OkStatus();
}

absl::Status Classify(Connection& c, const std::vector<std::string>& args) {
  if (args.size() < 4) return UsageError("classify: usage: trainctl classify JOB IMAGE [IMAGE ...] [--top=5]");
  trainer::v1::ClassifyRequest req;
  req.set_job_id(args[2]);
  req.set_top_k(absl::GetFlag(FLAGS_top));
  req.set_trial(absl::GetFlag(FLAGS_trial));
  for (size_t i = 3; i < args.size(); ++i) {
    auto bytes = ReadFile(args[i]);
    if (!bytes.ok()) return UsageError(absl::StrCat("classify: ", bytes.status().message()));
    req.add_images(*bytes);
  }
  auto response = c.Call(&Stub::Classify, req, "classify " + args[2]);
  if (!response.ok()) return response.status();
  const trainer::v1::ClassifyResponse& resp = *response;
  if (JsonOutput()) {
    PrintJson(resp);
    return absl::OkStatus();
  }
  for (int i = 0; i < resp.results_size(); ++i) {
    std::vector<std::string> top;
    for (const auto& p : resp.results(i).predictions()) {
      top.push_back(absl::StrFormat("%s %.1f%%", p.class_name(), 100 * p.probability()));
    }
    std::printf("%s: %s\n", args[3 + i].c_str(), absl::StrJoin(top, ", ").c_str());
  }
  return absl::OkStatus();
}

// Where to point TensorBoard: every job's event files sit under one folder.
absl::Status Tensorboard(Connection& c, const std::vector<std::string>& args) {
  if (args.size() > 3) return UsageError(absl::StrCat("tensorboard: unexpected argument ", args[3]));
  std::string dir;
  if (args.size() == 3) {
    auto job = c.GetJob(args[2]);
    if (!job.ok()) return job.status();
    dir = job->tensorboard_dir();
  } else {
    trainer::v1::ListJobsRequest req;
    req.set_page_size(1);
    auto resp = c.Call(&Stub::ListJobs, req, "tensorboard");
    if (!resp.ok()) return resp.status();
    if (resp->jobs().empty()) return UsageError("tensorboard: no jobs yet, so no event files");
    dir = std::filesystem::path(resp->jobs(0).tensorboard_dir()).parent_path().string();
  }
  if (JsonOutput()) {
    PrintJson(nlohmann::json{{"logdir", dir}});
  } else {
    std::printf("tensorboard --logdir %s\n", dir.c_str());
  }
  return absl::OkStatus();
}

absl::Status DemoData(const std::string& dir) {
  absl::Status st = MakeDemoDataset(dir, absl::GetFlag(FLAGS_classes),
                                    absl::GetFlag(FLAGS_per_class), 0);
  if (!st.ok()) return UsageError(std::string(st.message()));
  if (!JsonOutput()) {
    std::printf("wrote %d classes x %d images under %s\n", absl::GetFlag(FLAGS_classes),
                absl::GetFlag(FLAGS_per_class), dir.c_str());
  }
  return absl::OkStatus();
}

}  // namespace traind::client
