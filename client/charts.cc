#include "client/charts.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <opencv2/imgproc.hpp>

#include "absl/strings/str_format.h"

namespace traind::client {
namespace {

const cv::Scalar kBlack(0, 0, 0);
const cv::Scalar kGrid(225, 225, 225);
const cv::Scalar kWhite(255, 255, 255);
constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;

// A tick step of 1, 2 or 5 x 10^k giving about `target` ticks.
double NiceStep(double range, int target) {
  if (range <= 0) return 1;
  const double raw = range / target;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= m * p) return m * p;
  }
  return 10 * p;
}

std::string TickLabel(double v, double step) {
  if (std::abs(v) < step * 1e-6) v = 0;
  const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
  return absl::StrFormat("%.*f", decimals, v);
}

void Text(cv::Mat& img, const std::string& s, cv::Point at, double scale, int thickness = 1,
          const cv::Scalar& color = kBlack) {
  cv::putText(img, s, at, kFont, scale, color, thickness, cv::LINE_AA);
}

cv::Size TextSize(const std::string& s, double scale, int thickness = 1) {
  int baseline = 0;
  return cv::getTextSize(s, kFont, scale, thickness, &baseline);
}

// Text rotated by 90 degrees (reading upwards), centred on `center`.
void VerticalText(cv::Mat& img, const std::string& s, cv::Point center, double scale) {
  const cv::Size size = TextSize(s, scale);
  cv::Mat tile(size.height + 8, size.width + 4, CV_8UC3, kWhite);
  Text(tile, s, {2, size.height + 2}, scale);
  cv::Mat rotated;
  cv::rotate(tile, rotated, cv::ROTATE_90_COUNTERCLOCKWISE);
  cv::Rect dst(center.x - rotated.cols / 2, center.y - rotated.rows / 2, rotated.cols,
               rotated.rows);
  dst &= cv::Rect(0, 0, img.cols, img.rows);
  rotated(cv::Rect(0, 0, dst.width, dst.height)).copyTo(img(dst));
}

}  // namespace

cv::Scalar PaletteColor(size_t i) {
  static const cv::Scalar kColors[] = {
      {180, 119, 31}, {14, 127, 255}, {44, 160, 44},  {40, 39, 214},  {189, 103, 148},
      {75, 86, 140},  {194, 119, 227}, {127, 127, 127}, {34, 189, 188}, {207, 190, 23}};
  return kColors[i % (sizeof(kColors) / sizeof(kColors[0]))];
}

Chart::Chart(std::vector<Panel> panels, int panel_width, int panel_height)
    : panels_(std::move(panels)),
      width_(panel_width * static_cast<int>(std::max<size_t>(1, panels_.size()))),
      height_(panel_height) {
  for (size_t p = 0; p < panels_.size(); ++p) {
    Axes a{std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
           std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
           cv::Rect(static_cast<int>(p) * panel_width + 80, 50, panel_width - 110,
                    panel_height - 120)};
    for (const Series& s : panels_[p].series) {
      for (const auto& [x, y] : s.points) {
        if (!std::isfinite(x) || !std::isfinite(y)) continue;
        a.x_min = std::min(a.x_min, x);
        a.x_max = std::max(a.x_max, x);
        a.y_min = std::min(a.y_min, y);
        a.y_max = std::max(a.y_max, y);
      }
    }
    if (!std::isfinite(a.x_min)) a = {0, 1, 0, 1, a.plot};
    if (a.x_max <= a.x_min) a.x_max = a.x_min + 1;
    if (a.y_max <= a.y_min) {
      a.y_min -= 0.5;
      a.y_max += 0.5;
    }
    // Round the y range out to whole ticks, with a little headroom.
    const double y_step = NiceStep(a.y_max - a.y_min, 6);
    a.y_min = std::floor(a.y_min / y_step) * y_step;
    a.y_max = std::ceil(a.y_max / y_step) * y_step;
    if (a.y_max <= a.y_min) a.y_max = a.y_min + y_step;
    axes_.push_back(a);
  }
}

cv::Point Chart::PixelOf(size_t p, double x, double y) const {
  const Axes& a = axes_[p];
  const double fx = (x - a.x_min) / (a.x_max - a.x_min);
  const double fy = (y - a.y_min) / (a.y_max - a.y_min);
  // The extremes land on the plot's first and last pixel rows and columns.
  return {a.plot.x + static_cast<int>(std::lround(fx * (a.plot.width - 1))),
          a.plot.y + a.plot.height - 1 - static_cast<int>(std::lround(fy * (a.plot.height - 1)))};
}

cv::Mat Chart::Render() const {
  cv::Mat img(height_, width_, CV_8UC3, kWhite);
  for (size_t p = 0; p < panels_.size(); ++p) {
    const Panel& panel = panels_[p];
    const Axes& a = axes_[p];
    // Grid and ticks.
    const double x_step = NiceStep(a.x_max - a.x_min, 8);
    for (double x = std::ceil(a.x_min / x_step) * x_step; x <= a.x_max + 1e-9; x += x_step) {
      const cv::Point q = PixelOf(p, x, a.y_min);
      cv::line(img, {q.x, a.plot.y}, {q.x, a.plot.y + a.plot.height}, kGrid, 1);
      cv::line(img, q, {q.x, q.y + 5}, kBlack, 1);
      const std::string label = TickLabel(x, x_step);
      Text(img, label, {q.x - TextSize(label, 0.4).width / 2, q.y + 20}, 0.4);
    }
    const double y_step = NiceStep(a.y_max - a.y_min, 6);
    for (double y = a.y_min; y <= a.y_max + y_step * 1e-6; y += y_step) {
      const cv::Point q = PixelOf(p, a.x_min, y);
      cv::line(img, {a.plot.x, q.y}, {a.plot.x + a.plot.width, q.y}, kGrid, 1);
      cv::line(img, {q.x - 5, q.y}, q, kBlack, 1);
      const std::string label = TickLabel(y, y_step);
      Text(img, label, {q.x - 8 - TextSize(label, 0.4).width, q.y + 5}, 0.4);
    }
    cv::rectangle(img, a.plot, kBlack, 1);
    // Series, clipped to the plot area.
    cv::Mat area = img(a.plot);
    for (const Series& s : panel.series) {
      std::vector<cv::Point> pts;
      for (const auto& [x, y] : s.points) {
        if (std::isfinite(x) && std::isfinite(y)) pts.push_back(PixelOf(p, x, y) - a.plot.tl());
      }
      if (pts.size() > 1) cv::polylines(area, pts, false, s.color, s.thickness, cv::LINE_AA);
      if (s.markers || pts.size() == 1) {
        for (const auto& q : pts) cv::circle(area, q, 4, s.color, cv::FILLED, cv::LINE_AA);
      }
    }
    // Labels and title.
    Text(img, panel.title, {a.plot.x + a.plot.width / 2 - TextSize(panel.title, 0.6, 2).width / 2, 32},
         0.6, 2);
    Text(img, panel.x_label,
         {a.plot.x + a.plot.width / 2 - TextSize(panel.x_label, 0.5).width / 2,
          a.plot.y + a.plot.height + 48},
         0.5);
    VerticalText(img, panel.y_label, {a.plot.x - 62, a.plot.y + a.plot.height / 2}, 0.5);
    // Legend, top right inside the plot.
    int widest = 0;
    for (const Series& s : panel.series) widest = std::max(widest, TextSize(s.label, 0.45).width);
    const int rows = static_cast<int>(panel.series.size());
    cv::Rect box(a.plot.x + a.plot.width - widest - 50, a.plot.y + 8, widest + 42, rows * 20 + 8);
    if (rows > 0) {
      cv::rectangle(img, box, kWhite, cv::FILLED);
      cv::rectangle(img, box, kBlack, 1);
      for (int i = 0; i < rows; ++i) {
        const int y = box.y + 16 + i * 20;
        cv::line(img, {box.x + 6, y - 4}, {box.x + 28, y - 4}, panel.series[i].color, 3);
        Text(img, panel.series[i].label, {box.x + 34, y}, 0.45);
      }
    }
  }
  return img;
}

cv::Mat DrawConfusion(const std::vector<int64_t>& counts, int n,
                      const std::vector<std::string>& names) {
  const bool named = n <= 40;
  const int cell = std::max(5, std::min(40, 900 / std::max(1, n)));
  int margin = 70;
  if (named) {
    for (const auto& s : names) margin = std::max(margin, TextSize(s, 0.4).width + 20);
  }
  const int side = n * cell;
  cv::Mat img(side + margin + 60, side + margin + 40, CV_8UC3, kWhite);
  const cv::Point origin(margin, 50);
  for (int r = 0; r < n; ++r) {
    int64_t row = 0;
    for (int c = 0; c < n; ++c) row += counts[static_cast<size_t>(r) * n + c];
    for (int c = 0; c < n; ++c) {
      const double share = row ? static_cast<double>(counts[static_cast<size_t>(r) * n + c]) / row
                               : 0.0;
      // White (0) to dark blue (1).
      const cv::Scalar color(255 - 115 * share, 255 - 200 * share, 255 - 230 * share);
      cv::rectangle(img, cv::Rect(origin.x + c * cell, origin.y + r * cell, cell, cell), color,
                    cv::FILLED);
    }
  }
  cv::rectangle(img, cv::Rect(origin.x, origin.y, side, side), kBlack, 1);
  for (int k = 0; k < n; ++k) {
    const bool tick = named || k % 10 == 0;
    if (!tick) continue;
    const std::string label = named && k < static_cast<int>(names.size()) ? names[k]
                                                                          : std::to_string(k);
    Text(img, label, {origin.x - 8 - TextSize(label, 0.4).width, origin.y + k * cell + cell / 2 + 4},
         0.4);
    VerticalText(img, label, {origin.x + k * cell + cell / 2, origin.y + side + 8 + TextSize(label, 0.4).width / 2},
                 0.4);
  }
  Text(img, "Confusion matrix, rows normalised (row: true class, column: predicted)",
       {10, 30}, 0.55, 1);
  return img;
}

}  // namespace traind::client
