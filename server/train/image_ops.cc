// The augmentation ops at fixed parameters, each matching torchvision on PIL images (the declarations are in data.h).
#include "server/train/data.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/file_util.h"

namespace traind::train {
namespace fs = std::filesystem;
namespace {

// PIL's RGB -> L conversion: ITU-R 601-2 luma in 16-bit fixed point.
cv::Mat Gray(const cv::Mat& rgb) {
  cv::Mat gray(rgb.size(), CV_8UC1);
  const int cols = rgb.cols;  // a local: stores through uint8_t* may alias rgb.cols
  for (int y = 0; y < rgb.rows; ++y) {
    const uint8_t* in = rgb.ptr<uint8_t>(y);
    uint8_t* out = gray.ptr<uint8_t>(y);
    for (int x = 0; x < cols; ++x, in += 3) {
      out[x] = static_cast<uint8_t>((in[0] * 19595 + in[1] * 38470 + in[2] * 7471 + 0x8000) >> 16);
    }
  }
  return gray;
}

// PIL's Image.blend(degenerate, img, factor) on 8-bit data, as ImageEnhance
// uses it: degenerate + factor * (img - degenerate) in single precision,
// truncated and clipped to [0, 255].
inline uint8_t BlendValue(int value, int degenerate, float alpha) {
  float v = static_cast<float>(degenerate) + alpha * static_cast<float>(value - degenerate);
  v = std::min(std::max(v, 0.0f), 255.0f);  // branch-free, so the loop vectorizes
  return static_cast<uint8_t>(static_cast<int>(v));
}

cv::Mat Blend(const cv::Mat& img, const cv::Mat& degenerate, double factor) {
  const float alpha = static_cast<float>(factor);
  const int n = img.cols * 3;  // a local: stores through uint8_t* may alias img.cols
  cv::Mat out(img.size(), CV_8UC3);
  for (int y = 0; y < img.rows; ++y) {
    const uint8_t* in = img.ptr<uint8_t>(y);
    const uint8_t* deg = degenerate.ptr<uint8_t>(y);
    uint8_t* o = out.ptr<uint8_t>(y);
    for (int k = 0; k < n; ++k) o[k] = BlendValue(in[k], deg[k], alpha);
  }
  return out;
}

// The same against a flat degenerate image: a table of the 256 results.
cv::Mat BlendFlat(const cv::Mat& img, int degenerate, double factor) {
  const float alpha = static_cast<float>(factor);
  cv::Mat table(1, 256, CV_8U);
  for (int i = 0; i < 256; ++i) table.at<uint8_t>(i) = BlendValue(i, degenerate, alpha);
  cv::Mat out;
  cv::LUT(img, table, out);
  return out;
}

// Resampling as PIL's Image.resize with BILINEAR (torchvision's default for
// PIL images): a triangle filter widened by the reduction factor (so it
// antialiases when shrinking), 22-bit fixed-point weights, a horizontal pass
// into 8-bit rows, then a vertical pass.
constexpr int kPrecisionBits = 32 - 8 - 2;

struct Taps {
  int size = 0;                 // taps per output pixel
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // size per output pixel
};

Taps ComputeTaps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;
  Taps taps;
  taps.size = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.weights.assign(static_cast<size_t>(out_size) * taps.size, 0);
  std::vector<double> w(taps.size);
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    const int lo = std::max(0, static_cast<int>(center - support + 0.5));
    const int hi = std::min(in_size, static_cast<int>(center + support + 0.5));
    double total = 0;
    for (int i = 0; i < hi - lo; ++i) {
      const double t = std::abs((i + lo - center + 0.5) / filter_scale);
      w[i] = t < 1.0 ? 1.0 - t : 0.0;
      total += w[i];
    }
    for (int i = 0; i < hi - lo; ++i) {
      const double k = total != 0.0 ? w[i] / total : w[i];
      taps.weights[static_cast<size_t>(o) * taps.size + i] =
          static_cast<int32_t>(k < 0 ? -0.5 + k * (1 << kPrecisionBits)
                                     : 0.5 + k * (1 << kPrecisionBits));
    }
    taps.first[o] = lo;
    taps.count[o] = hi - lo;
  }
  return taps;
}

uint8_t Clip8(int32_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

cv::Mat PilResize(const cv::Mat& src, int out_w, int out_h) {
  const Taps h = ComputeTaps(src.cols, out_w);
  const Taps v = ComputeTaps(src.rows, out_h);
  // Only the source rows the vertical pass reads.
  const int row0 = v.first[0];
  const int row1 = v.first[out_h - 1] + v.count[out_h - 1];
  cv::Mat tmp(row1 - row0, out_w, CV_8UC3);
  // Locals and __restrict: a uint8_t store may alias anything, and would
  // otherwise make the compiler reload every tap count, offset and weight.
  const int* const first = h.first.data();
  const int* const count = h.count.data();
  const int32_t* const weights = h.weights.data();
  const size_t size = static_cast<size_t>(h.size);
  for (int y = row0; y < row1; ++y) {
    const uint8_t* __restrict in = src.ptr<uint8_t>(y);
    uint8_t* __restrict out = tmp.ptr<uint8_t>(y - row0);
    for (int o = 0; o < out_w; ++o) {
      const int32_t* k = weights + static_cast<size_t>(o) * size;
      int32_t acc[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1),
                        1 << (kPrecisionBits - 1)};
      const uint8_t* p = in + 3 * first[o];
      for (int i = 0, taps = count[o]; i < taps; ++i, p += 3) {
        acc[0] += p[0] * k[i];
        acc[1] += p[1] * k[i];
        acc[2] += p[2] * k[i];
      }
      for (int c = 0; c < 3; ++c) out[3 * o + c] = Clip8(acc[c]);
    }
  }
  // Row by row, each source row's contribution added across the whole row
  // (vectorizes). The weights are non-negative and sum to 2^22, so no partial
  // sum overflows and integer addition in any order gives PIL's result.
  cv::Mat dst(out_h, out_w, CV_8UC3);
  const int n = out_w * 3;
  std::vector<int32_t> acc(static_cast<size_t>(n));
  for (int o = 0; o < out_h; ++o) {
    const int32_t* k = &v.weights[static_cast<size_t>(o) * v.size];
    int32_t* __restrict a = acc.data();
    std::fill(a, a + n, 1 << (kPrecisionBits - 1));
    for (int i = 0, taps = v.count[o]; i < taps; ++i) {
      const uint8_t* __restrict row = tmp.ptr<uint8_t>(v.first[o] - row0 + i);
      const int32_t w = k[i];
      for (int x = 0; x < n; ++x) a[x] += row[x] * w;
    }
    uint8_t* __restrict out = dst.ptr<uint8_t>(o);
    for (int x = 0; x < n; ++x) out[x] = Clip8(a[x]);
  }
  return dst;
}

// PIL's RGB -> HSV conversion (colorsys's formulas, 8-bit channels); HsvTables
// below holds its results, and the way back.
void RgbToHsv(const uint8_t* in, uint8_t* out) {
  const uint8_t r = in[0], g = in[1], b = in[2];
  const uint8_t maxc = std::max({r, g, b}), minc = std::min({r, g, b});
  out[2] = maxc;
  if (minc == maxc) {
    out[0] = out[1] = 0;
    return;
  }
  const float cr = static_cast<float>(maxc - minc);
  const float s = cr / static_cast<float>(maxc);
  const float rc = static_cast<float>(maxc - r) / cr;
  const float gc = static_cast<float>(maxc - g) / cr;
  const float bc = static_cast<float>(maxc - b) / cr;
  float h;
  if (r == maxc) {
    h = bc - gc;
  } else if (g == maxc) {
    h = 2.0f + rc - bc;
  } else {
    h = 4.0f + gc - rc;
  }
  h = static_cast<float>(std::fmod(h / 6.0 + 1.0, 1.0));
  auto clip = [](int v) { return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v); };
  out[0] = clip(static_cast<int>(h * 255.0));
  out[1] = clip(static_cast<int>(s * 255.0));
}

// Half away from zero, as std::lround, for the non-negative values of
// HsvToRgb (x - trunc(x) is exact), without a library call per channel.
uint8_t RoundClip(double x) {
  const long r = static_cast<long>(x) + (x - static_cast<double>(static_cast<long>(x)) >= 0.5);
  return static_cast<uint8_t>(r < 0 ? 0 : r > 255 ? 255 : r);
}

// The two conversions above as table look-ups, bit-identical and several
// times faster (a hue shift was most of an augmented sample's time). An
// RGB pixel's hue depends only on which channel comes first among the
// largest (R, then G, then B, as RgbToHsv tests them) and on how far below it
// the other two are; its saturation on the largest value and the range. The
// tables hold RgbToHsv's own results for every such case (256 KiB in all);
// HsvToRgb's per-hue and per-saturation terms are tabled the same way.
class HsvTables {
 public:
  static const HsvTables& Get() {
    static const HsvTables* tables = new HsvTables();
    return *tables;
  }

  void RgbToHsv(const uint8_t* in, uint8_t* out) const {
    const uint8_t r = in[0], g = in[1], b = in[2];
    const uint8_t maxc = std::max({r, g, b}), minc = std::min({r, g, b});
    out[2] = maxc;
    if (r == maxc) {
      out[0] = hue_[0][maxc - g][maxc - b];
    } else if (g == maxc) {
      out[0] = hue_[1][maxc - r][maxc - b];
    } else {
      out[0] = hue_[2][maxc - r][maxc - g];
    }
    out[1] = saturation_[maxc][maxc - minc];
  }

  void HsvToRgb(const uint8_t* in, uint8_t* out) const {
    const uint8_t h = in[0], s = in[1], v = in[2];
    if (s == 0) {
      out[0] = out[1] = out[2] = v;
      return;
    }
    // PIL's HSV -> RGB (colorsys's formulas, 8-bit channels).
    const float f = fraction_[h];
    const float fs = scaled_saturation_[s];
    const double value = static_cast<float>(v);
    const uint8_t p = RoundClip(value * (1.0 - fs));
    const uint8_t q = RoundClip(value * (1.0 - fs * f));
    const uint8_t t = RoundClip(value * (1.0 - fs * (1.0 - f)));
    switch (sector_[h]) {
      case 0: out[0] = v; out[1] = t; out[2] = p; break;
      case 1: out[0] = q; out[1] = v; out[2] = p; break;
      case 2: out[0] = p; out[1] = v; out[2] = t; break;
      case 3: out[0] = p; out[1] = q; out[2] = v; break;
      case 4: out[0] = t; out[1] = p; out[2] = v; break;
      default: out[0] = v; out[1] = p; out[2] = q; break;
    }
  }

 private:
  HsvTables() {
    uint8_t hsv[3];
    for (int d1 = 0; d1 < 256; ++d1) {
      for (int d2 = 0; d2 < 256; ++d2) {
        const uint8_t a = static_cast<uint8_t>(255 - d1), b = static_cast<uint8_t>(255 - d2);
        const uint8_t red_first[3] = {255, a, b};
        traind::train::RgbToHsv(red_first, hsv);
        hue_[0][d1][d2] = hsv[0];
        if (d1 > 0) {  // R below the largest
          const uint8_t green_first[3] = {a, 255, b};
          traind::train::RgbToHsv(green_first, hsv);
          hue_[1][d1][d2] = hsv[0];
        }
        if (d1 > 0 && d2 > 0) {  // R and G below the largest
          const uint8_t blue_first[3] = {a, b, 255};
          traind::train::RgbToHsv(blue_first, hsv);
          hue_[2][d1][d2] = hsv[0];
        }
      }
    }
    for (int maxc = 0; maxc < 256; ++maxc) {
      for (int range = 0; range <= maxc; ++range) {
        const uint8_t px[3] = {static_cast<uint8_t>(maxc), static_cast<uint8_t>(maxc - range),
                               static_cast<uint8_t>(maxc)};
        traind::train::RgbToHsv(px, hsv);
        saturation_[maxc][range] = hsv[1];
      }
    }
    for (int i = 0; i < 256; ++i) {
      const int sector = static_cast<int>(std::floor(static_cast<float>(i) * 6.0 / 255.0));
      sector_[i] = static_cast<uint8_t>(sector % 6);
      fraction_[i] = static_cast<float>(static_cast<float>(i) * 6.0 / 255.0 - static_cast<float>(sector));
      scaled_saturation_[i] = static_cast<float>(static_cast<float>(i) / 255.0);
    }
  }

  uint8_t hue_[3][256][256] = {};
  uint8_t saturation_[256][256] = {};
  uint8_t sector_[256] = {};
  float fraction_[256] = {};
  float scaled_saturation_[256] = {};
};

}  // namespace

cv::Mat AdjustBrightness(const cv::Mat& img, double factor) {
  return BlendFlat(img, 0, factor);
}

cv::Mat AdjustContrast(const cv::Mat& img, double factor) {
  // ImageEnhance.Contrast: a flat image at the rounded mean luma.
  const double mean = cv::mean(Gray(img))[0];
  return BlendFlat(img, static_cast<int>(mean + 0.5), factor);
}

cv::Mat AdjustSaturation(const cv::Mat& img, double factor) {
  cv::Mat gray3;
  cv::cvtColor(Gray(img), gray3, cv::COLOR_GRAY2RGB);
  return Blend(img, gray3, factor);
}

cv::Mat AdjustHue(const cv::Mat& img, double shift) {
  // torchvision: np.uint8(shift * 255) added to PIL's 8-bit hue, wrapping.
  const uint8_t delta = static_cast<uint8_t>(static_cast<int>(shift * 255.0) & 0xff);
  const HsvTables& t = HsvTables::Get();
  cv::Mat out(img.size(), CV_8UC3);
  for (int y = 0; y < img.rows; ++y) {
    const uint8_t* in = img.ptr<uint8_t>(y);
    uint8_t* o = out.ptr<uint8_t>(y);
    for (int x = 0, cols = img.cols; x < cols; ++x, in += 3, o += 3) {
      uint8_t hsv[3];
      t.RgbToHsv(in, hsv);
      hsv[0] = static_cast<uint8_t>(hsv[0] + delta);
      t.HsvToRgb(hsv, o);
    }
  }
  return out;
}

cv::Mat HorizontalFlip(const cv::Mat& img) {
  cv::Mat flipped;
  cv::flip(img, flipped, 1);
  return flipped;
}

cv::Mat Rotate(const cv::Mat& img, double degrees) {
  // PIL's Image.rotate(angle, NEAREST): the inverse affine map about (w/2, h/2)
  // applied to output pixel centres, truncated to the input pixel.
  const double rad = -degrees * M_PI / 180.0;
  const double a = std::cos(rad), b = std::sin(rad), d = -std::sin(rad), e = std::cos(rad);
  const double cx = img.cols / 2.0, cy = img.rows / 2.0;
  const double c = a * -cx + b * -cy + cx;
  const double f = d * -cx + e * -cy + cy;
  cv::Mat out(img.size(), CV_8UC3, cv::Scalar::all(0));
  for (int y = 0; y < img.rows; ++y) {
    uint8_t* o = out.ptr<uint8_t>(y);
    for (int x = 0; x < img.cols; ++x) {
      const double xin = a * (x + 0.5) + b * (y + 0.5) + c;
      const double yin = d * (x + 0.5) + e * (y + 0.5) + f;
      if (xin < 0 || yin < 0) continue;
      const int xi = static_cast<int>(xin), yi = static_cast<int>(yin);
      if (xi >= img.cols || yi >= img.rows) continue;
      const uint8_t* in = img.ptr<uint8_t>(yi) + 3 * xi;
      o[3 * x] = in[0];
      o[3 * x + 1] = in[1];
      o[3 * x + 2] = in[2];
    }
  }
  return out;
}

cv::Mat ResizeSquare(const cv::Mat& rgb, int size) {
  // OpenCV has no antialiased bilinear (INTER_AREA differs from PIL by a
  // mean of 2.3 in 0..255 on Caltech-101), so this is PIL's filter itself.
  return PilResize(rgb, size, size);
}

}  // namespace traind::train
