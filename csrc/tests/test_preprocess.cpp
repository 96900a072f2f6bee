// C++ preprocessing on images whose answer is known (the Python comparison on real tiles is in
// tests/test_native_engine.py). Also runs under ASan/UBSan (scripts/native_checks.sh).
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "engine/preprocess.h"

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: CHECK(%s)\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

static std::vector<uint8_t> solid(int h, int w, uint8_t r, uint8_t g, uint8_t b) {
  std::vector<uint8_t> rgb(size_t(h) * w * 3);
  for (size_t i = 0; i < rgb.size(); i += 3) rgb[i] = r, rgb[i + 1] = g, rgb[i + 2] = b;
  return rgb;
}

static int count(const std::vector<uint8_t>& m) {
  int n = 0;
  for (uint8_t v : m) n += v;
  return n;
}

int main() {
  const saganet::MaskConfig c;
  // Glass (white) and flat colour (no focus) are never valid.
  for (auto rgb : {solid(40, 50, 255, 255, 255), solid(40, 50, 120, 60, 160)}) {
    std::vector<uint8_t> m(40 * 50, 7);
    saganet::valid_area_mask(rgb.data(), 40, 50, c, m.data());
    CHECK(count(m) == 0);
  }
  // Dark purple nuclei (4x4 dots every 8 px) on pink tissue: in focus, cellular, tissue -> valid,
  // except a white glass band, which stays invalid.
  const int h = 64, w = 96;
  auto rgb = solid(h, w, 230, 150, 190);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      uint8_t* p = &rgb[(size_t(y) * w + x) * 3];
      if (x >= 80) p[0] = p[1] = p[2] = 255;
      else if (y % 8 < 4 && x % 8 < 4) p[0] = 60, p[1] = 30, p[2] = 120;
    }
  std::vector<uint8_t> m(size_t(h) * w);
  saganet::valid_area_mask(rgb.data(), h, w, c, m.data());
  int inside = 0, glass = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) (x < 70 ? inside : glass) += x < 70 ? m[size_t(y) * w + x] : (x >= 84 ? m[size_t(y) * w + x] : 0);
  CHECK(inside == 70 * h);
  CHECK(glass == 0);
  // Too small an image is refused, not read out of bounds; 2x2 works.
  bool threw = false;
  try {
    saganet::valid_area_mask(rgb.data(), 1, 5, c, m.data());
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
  saganet::valid_area_mask(rgb.data(), 2, 2, c, m.data());
  // Normalisation: (v / 255 - mean) / std per plane.
  const float mean[3] = {0.5f, 0.25f, 0.f}, sd[3] = {0.25f, 0.5f, 1.f};
  const uint8_t px[3] = {255, 0, 51};
  float out[3];
  saganet::normalise(px, 1, 1, mean, sd, out);
  CHECK(out[0] == 2.f && out[1] == -0.5f && out[2] > 0.19999f && out[2] < 0.20001f);
  std::printf(failures ? "test_preprocess: %d FAILED\n" : "test_preprocess: OK\n", failures);
  return failures ? 1 : 0;
}
