// The valid-area mask of saganet/tissue.py, step for step and in the same float types, so that
// C++ and Python give the same bits (tests/test_native_engine.py checks it on real tiles):
//   tissue   = summed optical density > tissue_od               (float32, correctly rounded table)
//   focus    = box mean (focus_window) of |grad grey|^2 > focus_min  (np.gradient; scipy's
//              uniform_filter: a running mean in double per axis, axis 0 then 1, float32 between)
//   cellular = box mean (cell_window) of [haematoxylin > t] > cell_density_min (skimage rgb2hed)
//   valid    = tissue & focus & cellular, then components (4-connected) of <= min_region pixels
//              removed, then holes of <= min_region pixels filled (skimage remove_small_*).
// Built with -ffp-contract=off: numpy rounds every multiply and add, so must we.
#include "engine/preprocess.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace saganet {
namespace {

// scipy.ndimage "reflect" (half-sample symmetric: d c b a | a b c d | d c b a), any distance.
inline int reflect(int i, int n) {
  const int period = 2 * n;
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - 1 - i;
}

// scipy.ndimage.uniform_filter1d along one axis of a float32 image, in place through `tmp`.
void uniform_filter_1d(std::vector<float>& a, int h, int w, int size, bool along_rows) {
  const int length = along_rows ? h : w, lines = along_rows ? w : h;
  const int before = size / 2;
  std::vector<double> line(length + size);
  std::vector<float> out(a.size());
  for (int l = 0; l < lines; ++l) {
    auto at = [&](int i) -> size_t { return along_rows ? size_t(i) * w + l : size_t(l) * w + i; };
    for (int i = 0; i < length + size - 1; ++i) line[i] = a[at(reflect(i - before, length))];
    double tmp = 0.0;
    for (int k = 0; k < size; ++k) tmp += line[k];
    tmp /= double(size);
    out[at(0)] = float(tmp);
    for (int i = 1; i < length; ++i) {
      tmp += (line[i + size - 1] - line[i - 1]) / double(size);
      out[at(i)] = float(tmp);
    }
  }
  a.swap(out);
}

void uniform_filter(std::vector<float>& a, int h, int w, int size) {
  if (size <= 1) return;
  uniform_filter_1d(a, h, w, size, true);   // axis 0
  uniform_filter_1d(a, h, w, size, false);  // axis 1
}

// Set to 0 every 4-connected component of pixels equal to `value` with at most `max_size` pixels.
void remove_small(std::vector<uint8_t>& m, int h, int w, uint8_t value, int max_size) {
  std::vector<int32_t> label(m.size(), -1);
  std::vector<int32_t> stack, members;
  for (size_t start = 0; start < m.size(); ++start) {
    if (m[start] != value || label[start] >= 0) continue;
    members.clear();
    stack.assign(1, int32_t(start));
    label[start] = 1;
    while (!stack.empty()) {
      const int32_t p = stack.back();
      stack.pop_back();
      members.push_back(p);
      const int y = p / w, x = p % w;
      const int32_t nb[4] = {y > 0 ? p - w : -1, y + 1 < h ? p + w : -1, x > 0 ? p - 1 : -1, x + 1 < w ? p + 1 : -1};
      for (int32_t q : nb)
        if (q >= 0 && m[q] == value && label[q] < 0) {
          label[q] = 1;
          stack.push_back(q);
        }
    }
    if (int(members.size()) <= max_size)
      for (int32_t p : members) m[p] = uint8_t(1 - value);
  }
}

struct Tables {
  float od[256];      // -log((v + 1) / 256)
  double haem[256];   // log(max(v / 255, 1e-6)) / log(1e-6), per channel before the stain matrix
  Tables() {
    const double log_adjust = std::log(1e-6);
    for (int v = 0; v < 256; ++v) {
      od[v] = float(-std::log((double(v) + 1.0) / 256.0));
      haem[v] = std::log(std::max(double(v) / 255.0, 1e-6)) / log_adjust;
    }
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

// Column 0 of skimage.color.hed_from_rgb (the inverse of Ruifrok and Johnston's rgb_from_hed).
constexpr double kHaem[3] = {1.8779827368521356, -0.06590806222356334, -0.6019073634392891};
constexpr float kGrey[3] = {0.299f, 0.587f, 0.114f};

// saganet.tissue.focus_threshold: min(focus_min, focus_relative * the k-th smallest tissue energy,
// k = floor(0.75 (n - 1))), at least focus_floor; all in float32 like numpy.
float focus_threshold(const std::vector<float>& energy, const std::vector<uint8_t>& tissue, const MaskConfig& c) {
  if (!(c.focus_relative > 0)) return c.focus_min;
  std::vector<float> values;
  for (size_t i = 0; i < energy.size(); ++i)
    if (tissue[i]) values.push_back(energy[i]);
  float ref = 0.0f;
  if (!values.empty()) {
    const size_t k = size_t(0.75 * double(values.size() - 1));
    std::nth_element(values.begin(), values.begin() + k, values.end());
    ref = values[k];
  }
  return std::max(c.focus_floor, std::min(c.focus_min, c.focus_relative * ref));
}

}  // namespace

void valid_area_mask(const uint8_t* rgb, int h, int w, const MaskConfig& c, uint8_t* valid) {
  if (h < 2 || w < 2) throw std::invalid_argument("valid_area_mask needs an image of at least 2x2 pixels");
  if (c.focus_window < 1 || c.cell_window < 1) throw std::invalid_argument("valid_area_mask: windows must be >= 1 px");
  const Tables& t = tables();
  const size_t n = size_t(h) * w;
  std::vector<float> grey(n), energy(n), nuclei(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = rgb + 3 * i;
    grey[i] = (float(p[0]) / 255.0f * kGrey[0] + float(p[1]) / 255.0f * kGrey[1]) + float(p[2]) / 255.0f * kGrey[2];
    double haem = (t.haem[p[0]] * kHaem[0] + t.haem[p[1]] * kHaem[1]) + t.haem[p[2]] * kHaem[2];
    haem = std::max(haem, 0.0);
    nuclei[i] = haem > c.nuclei_threshold ? 1.0f : 0.0f;
  }
  // np.gradient: central differences inside, one-sided at the edges.
  auto g = [&](int y, int x) { return grey[size_t(y) * w + x]; };
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const float gy = y == 0 ? g(1, x) - g(0, x) : y == h - 1 ? g(h - 1, x) - g(h - 2, x) : (g(y + 1, x) - g(y - 1, x)) / 2.0f;
      const float gx = x == 0 ? g(y, 1) - g(y, 0) : x == w - 1 ? g(y, w - 1) - g(y, w - 2) : (g(y, x + 1) - g(y, x - 1)) / 2.0f;
      energy[size_t(y) * w + x] = gx * gx + gy * gy;
    }
  uniform_filter(energy, h, w, c.focus_window);
  uniform_filter(nuclei, h, w, c.cell_window);
  std::vector<uint8_t> m(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = rgb + 3 * i;
    m[i] = (t.od[p[0]] + t.od[p[1]]) + t.od[p[2]] > c.tissue_od;
  }
  const float focus_min = focus_threshold(energy, m, c);
  for (size_t i = 0; i < n; ++i) m[i] = m[i] && energy[i] > focus_min && nuclei[i] > c.cell_density_min;
  if (c.min_region > 0) {
    remove_small(m, h, w, 1, c.min_region);  // small objects
    remove_small(m, h, w, 0, c.min_region);  // small holes
  }
  for (size_t i = 0; i < n; ++i) valid[i] = m[i];
}

void normalise(const uint8_t* rgb, int h, int w, const float mean[3], const float std[3], float* image) {
  const size_t n = size_t(h) * w;
  // The same float32 operations, in the same order, as saganet.preprocess.Preprocessing.normalise
  // (a division by std, not a product with its reciprocal: those differ in the last bit).
  for (int ch = 0; ch < 3; ++ch) {
    float* plane = image + ch * n;
    for (size_t i = 0; i < n; ++i) plane[i] = (float(rgb[3 * i + ch]) / 255.0f - mean[ch]) / std[ch];
  }
}

}  // namespace saganet
