#include "client/charts.h"

#include <gtest/gtest.h>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

namespace traind::client {
namespace {

bool IsBackground(const cv::Mat& img, cv::Point p) {
  const cv::Vec3b v = img.at<cv::Vec3b>(p);
  return v[0] > 200 && v[1] > 200 && v[2] > 200;  // white or the light grid
}

// A known history: the pixels where the curves must be are drawn, in the
// series' colours, and the image has the size asked for.
TEST(ChartsTest, CurvesLandWhereTheirDataSays) {
  Panel loss{"Loss", "epoch", "nats", {}};
  loss.series.push_back({"train", {{1, 2.0}, {2, 1.5}, {3, 1.0}}, cv::Scalar(200, 0, 0), 3, true});
  loss.series.push_back({"validation", {{1, 2.2}, {2, 1.9}, {3, 1.8}}, cv::Scalar(0, 0, 200), 3,
                         true});
  Panel acc{"Accuracy", "epoch", "%", {}};
  acc.series.push_back({"validation", {{1, 10}, {2, 40}, {3, 55}}, cv::Scalar(0, 150, 0), 3, true});
  const Chart chart({loss, acc}, 640, 480);
  const cv::Mat img = chart.Render();
  ASSERT_EQ(img.cols, 1280);
  ASSERT_EQ(img.rows, 480);
  ASSERT_EQ(img.type(), CV_8UC3);
  for (double x : {1.0, 1.5, 2.0, 3.0}) {
    const double y = x <= 2 ? 2.0 - 0.5 * (x - 1) : 1.0;  // on the train line
    const cv::Point p = chart.PixelOf(0, x, x == 3.0 ? 1.0 : y);
    const cv::Vec3b v = img.at<cv::Vec3b>(p);
    EXPECT_GT(v[0], 120) << "x=" << x << " at " << p << ": " << v;  // blue-ish (BGR)
    EXPECT_LT(v[2], 120) << "x=" << x << " at " << p << ": " << v;
  }
  const cv::Point val = chart.PixelOf(1, 2, 40);
  EXPECT_GE(val.x, 640);  // second panel
  EXPECT_FALSE(IsBackground(img, val));
  EXPECT_GT(img.at<cv::Vec3b>(val)[1], 100);
  // Away from every line, inside the plot: background.
  EXPECT_TRUE(IsBackground(img, chart.PixelOf(1, 1.5, 54)));
  // Axis labels and ticks put dark pixels left of and below the plot.
  int dark = 0;
  for (int y = 0; y < img.rows; ++y) {
    for (int x = 0; x < 75; ++x) dark += img.at<cv::Vec3b>(y, x)[0] < 100;
  }
  EXPECT_GT(dark, 50);
}

TEST(ChartsTest, ConfusionCellsDarkenWithTheirShareOfTheRow) {
  const std::vector<int64_t> counts = {9, 1, 0,  //
                                       0, 5, 5,  //
                                       0, 0, 0};
  const cv::Mat img = DrawConfusion(counts, 3, {"a", "b", "c"});
  ASSERT_FALSE(img.empty());
  // Cells are coloured by their share of the row, white (0) to dark blue (1):
  // B = 255 - 115 s, G = 255 - 200 s, R = 255 - 230 s.
  auto cells_of_share = [&](double share) {
    const cv::Scalar c(255 - 115 * share, 255 - 200 * share, 255 - 230 * share);
    cv::Mat mask;
    cv::inRange(img, c - cv::Scalar(2, 2, 2), c + cv::Scalar(2, 2, 2), mask);
    return cv::countNonZero(mask);
  };
  const int cell = cells_of_share(0.9);
  EXPECT_GT(cell, 100);                    // (a, a): 9 of 10
  EXPECT_GT(cells_of_share(0.1), 100);     // (a, b)
  // (b, b) and (b, c), give or take the border drawn over edge cells.
  EXPECT_NEAR(cells_of_share(0.5), 2 * cell, 0.1 * 2 * cell);
  EXPECT_EQ(cells_of_share(1.0), 0);       // no row is all one class
}

}  // namespace
}  // namespace traind::client
