#include "client/demo_data.h"

#include <filesystem>
#include <random>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace traind::client {
namespace {

const char* const kShapes[] = {"circle", "cross", "square", "triangle", "ring", "star"};

void Draw(cv::Mat& img, int shape, std::mt19937& rng) {
  std::uniform_int_distribution<int> pos(28, 68), radius(14, 26), colour(40, 255),
      angle(0, 359);
  const cv::Point c(pos(rng), pos(rng));
  const int r = radius(rng);
  const cv::Scalar col(colour(rng), colour(rng), colour(rng));
  const double a = angle(rng) * CV_PI / 180.0;
  auto at = [&](double ang, double rad) {
    return cv::Point(c.x + static_cast<int>(rad * std::cos(a + ang)),
                     c.y + static_cast<int>(rad * std::sin(a + ang)));
  };
  switch (shape) {
    case 0:
      cv::circle(img, c, r, col, cv::FILLED, cv::LINE_AA);
      break;
    case 1:
      cv::line(img, at(0, r), at(CV_PI, r), col, 6, cv::LINE_AA);
      cv::line(img, at(CV_PI / 2, r), at(3 * CV_PI / 2, r), col, 6, cv::LINE_AA);
      break;
    case 2: {
      std::vector<cv::Point> pts;
      for (int k = 0; k < 4; ++k) pts.push_back(at(CV_PI / 4 + k * CV_PI / 2, r));
      cv::fillConvexPoly(img, pts, col, cv::LINE_AA);
      break;
    }
    case 3: {
      std::vector<cv::Point> pts;
      for (int k = 0; k < 3; ++k) pts.push_back(at(k * 2 * CV_PI / 3, r));
      cv::fillConvexPoly(img, pts, col, cv::LINE_AA);
      break;
    }
    case 4:
      cv::circle(img, c, r, col, 5, cv::LINE_AA);
      break;
    default: {
      std::vector<cv::Point> pts;
      for (int k = 0; k < 10; ++k) pts.push_back(at(k * CV_PI / 5, k % 2 ? r / 2.5 : r));
      cv::fillPoly(img, std::vector<std::vector<cv::Point>>{pts}, col, cv::LINE_AA);
      break;
    }
  }
}

}  // namespace

absl::Status MakeDemoDataset(const std::string& dir, int classes, int per_class,
                             unsigned seed) {
  constexpr int kMaxClasses = sizeof(kShapes) / sizeof(kShapes[0]);
  if (classes < 2 || classes > kMaxClasses) {
    return absl::InvalidArgumentError(
        absl::StrCat("--classes: must be in [2, ", kMaxClasses, "]"));
  }
  if (per_class < 2 || per_class > 10000) {
    return absl::InvalidArgumentError("--per_class: must be in [2, 10000]");
  }
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> bg(0, 90);
  for (int k = 0; k < classes; ++k) {
    const std::filesystem::path class_dir = std::filesystem::path(dir) / kShapes[k];
    std::error_code ec;
    std::filesystem::create_directories(class_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", class_dir.string()));
    for (int i = 0; i < per_class; ++i) {
      cv::Mat img(96, 96, CV_8UC3, cv::Scalar(bg(rng), bg(rng), bg(rng)));
      cv::Mat noise(img.size(), img.type());
      cv::randn(noise, cv::Scalar::all(0), cv::Scalar::all(12));
      img += noise;
      Draw(img, k, rng);
      const std::string path = (class_dir / absl::StrFormat("%04d.jpg", i)).string();
      if (!cv::imwrite(path, img)) {
        return absl::InternalError(absl::StrCat("cannot write ", path));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace traind::client
