// Tile preprocessing in C++, bit for bit the Python version (saganet/tissue.py valid_area_mask and
// saganet/preprocess.py Preprocessing.normalise): the valid-area mask and the normalisation. No libtorch.
#pragma once

#include <cstdint>
#include <string>

namespace saganet {

// The knobs of saganet.tissue.MaskConfig; distances in pixels of the tile.
struct MaskConfig {
  float tissue_od = 0.3f;
  int focus_window = 15;
  float focus_min = 0.004f;
  float focus_relative = 0.1f;  // 0 = the fixed focus_min of bundles made before the adaptive threshold
  float focus_floor = 0.00025f;
  double nuclei_threshold = 0.05;  // "otsu" is not supported here: the engine refuses such bundles
  int cell_window = 21;
  float cell_density_min = 0.05f;
  int min_region = 64;
};

// rgb: h*w*3 uint8 (row-major, RGB); valid: h*w bytes, 1 = diagnostically usable. Throws
// std::invalid_argument for sizes the Python version also refuses (under 2x2, bad windows).
void valid_area_mask(const uint8_t* rgb, int h, int w, const MaskConfig& config, uint8_t* valid);

// rgb: h*w*3 uint8 -> image: 3*h*w float32 planes, (v / 255 - mean[c]) / std[c].
void normalise(const uint8_t* rgb, int h, int w, const float mean[3], const float std[3], float* image);

}  // namespace saganet
