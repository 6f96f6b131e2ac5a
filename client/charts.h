// Line charts and confusion matrices drawn with OpenCV, for `trainctl plot`
// and `trainctl report --confusion`. Plain data in, an image out; no RPC.
#ifndef TRAIND_CLIENT_CHARTS_H_
#define TRAIND_CLIENT_CHARTS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>

namespace traind::client {

struct Series {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (x, y), x increasing
  cv::Scalar color;                                // BGR
  int thickness = 2;
  bool markers = false;  // a dot at each point (for per-epoch series)
};

struct Panel {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::vector<Series> series;
};

// Panels side by side, each with axes, ticks, tick labels, axis labels, a
// title and a legend.
class Chart {
 public:
  Chart(std::vector<Panel> panels, int panel_width = 640, int panel_height = 480);
  cv::Mat Render() const;
  // Where (x, y) of panel `p` lands in the rendered image.
  cv::Point PixelOf(size_t p, double x, double y) const;

 private:
  struct Axes {
    double x_min, x_max, y_min, y_max;
    cv::Rect plot;  // the data area, in image coordinates
  };
  std::vector<Panel> panels_;
  std::vector<Axes> axes_;
  int width_, height_;
};

// Row-normalised confusion matrix (rows: true class, columns: predicted), a
// cell per class pair, class names on the axes when they fit.
cv::Mat DrawConfusion(const std::vector<int64_t>& counts, int num_classes,
                      const std::vector<std::string>& names);

// Distinct line colours (BGR).
cv::Scalar PaletteColor(size_t i);

}  // namespace traind::client

#endif  // TRAIND_CLIENT_CHARTS_H_
