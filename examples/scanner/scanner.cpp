// A scanner-side program over the installed saganet engine (C API, saganet/engine.h):
//
//   scanner BUNDLE SLIDE [--mpp X] [--batch N] [--threads N]    a slide, read with OpenSlide's C library
//   scanner BUNDLE FOLDER [--batch N] [--threads N]             a folder of T x T tiles as binary PPM (P6)
//
// Lays a grid of tiles at the bundle's microns per pixel, skips tiles that are mostly glass,
// classifies the rest in batches and prints the tile count per class (tiles with under 5% valid
// area are counted apart) and the slide's mean class probabilities. Exit status 0 on success.
#include <saganet/engine.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <string>
#include <sys/stat.h>
#include <vector>

#ifdef SCANNER_WITH_OPENSLIDE
#include <openslide.h>
#endif

namespace {

struct Tally {
  std::vector<long> counts;
  std::vector<double> prob_sum;
  long low_valid = 0, tiles = 0;
};

int die(const std::string& msg) {
  std::fprintf(stderr, "scanner: %s\n", msg.c_str());
  return 1;
}

// Classify one batch and add it to the tally; false (message printed) on failure.
bool classify(saganet_engine* e, const std::vector<uint8_t>& batch, int64_t n, Tally& t) {
  const int k = saganet_engine_num_classes(e);
  std::vector<float> probs(static_cast<size_t>(n) * k), valid(static_cast<size_t>(n));
  if (saganet_engine_classify(e, batch.data(), n, probs.data(), nullptr, valid.data()) != SAGANET_OK) {
    std::fprintf(stderr, "scanner: classify failed: %s\n", saganet_last_error());
    return false;
  }
  for (int64_t i = 0; i < n; ++i) {
    ++t.tiles;
    if (valid[size_t(i)] < 0.05f) {
      ++t.low_valid;
      continue;
    }
    const float* p = &probs[size_t(i) * k];
    ++t.counts[size_t(std::max_element(p, p + k) - p)];
    for (int c = 0; c < k; ++c) t.prob_sum[size_t(c)] += p[c];
  }
  return true;
}

// Mostly glass: the tile's mean brightness is high and it has little colour.
bool is_glass(const uint8_t* rgb, int t) {
  long bright = 0;
  for (long i = 0; i < long(t) * t; ++i) {
    const uint8_t* p = rgb + 3 * i;
    bright += (p[0] > 215 && p[1] > 215 && p[2] > 215);
  }
  return bright > 0.9 * t * t;
}

// Bilinear resampling of a square RGB region to t x t (the region is at most a few pixels off).
void resize(const std::vector<uint8_t>& src, int s, uint8_t* dst, int t) {
  for (int y = 0; y < t; ++y)
    for (int x = 0; x < t; ++x) {
      const double fy = std::min((y + 0.5) * s / t - 0.5, s - 1.0), fx = std::min((x + 0.5) * s / t - 0.5, s - 1.0);
      const int y0 = std::max(0, int(std::floor(fy))), x0 = std::max(0, int(std::floor(fx)));
      const int y1 = std::min(s - 1, y0 + 1), x1 = std::min(s - 1, x0 + 1);
      const double wy = std::max(0.0, fy - y0), wx = std::max(0.0, fx - x0);
      for (int c = 0; c < 3; ++c) {
        auto at = [&](int yy, int xx) { return double(src[(size_t(yy) * s + xx) * 3 + c]); };
        const double v = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1));
        dst[(size_t(y) * t + x) * 3 + c] = uint8_t(std::lround(std::clamp(v, 0.0, 255.0)));
      }
    }
}

#ifdef SCANNER_WITH_OPENSLIDE
int run_slide(saganet_engine* e, const char* path, double mpp_arg, int batch_size, Tally& t) {
  openslide_t* slide = openslide_open(path);
  if (!slide) return die(std::string(path) + ": not a slide OpenSlide can read");
  if (const char* err = openslide_get_error(slide)) {
    std::string msg = std::string(path) + ": " + err;
    openslide_close(slide);
    return die(msg);
  }
  double mpp = mpp_arg;
  if (mpp <= 0) {
    const char* v = openslide_get_property_value(slide, OPENSLIDE_PROPERTY_NAME_MPP_X);
    mpp = v ? std::atof(v) : 0;
    if (mpp <= 0) {
      openslide_close(slide);
      return die(std::string(path) + ": the slide has no microns-per-pixel property; pass --mpp");
    }
  }
  int64_t w = 0, h = 0;
  openslide_get_level0_dimensions(slide, &w, &h);
  const int tile = saganet_engine_tile_size(e);
  const double size0 = tile * saganet_engine_mpp(e) / mpp;  // tile edge in level-0 pixels
  const int level = openslide_get_best_level_for_downsample(slide, size0 / tile);
  const double ds = openslide_get_level_downsample(slide, level);
  const int side = std::max(1, int(std::lround(size0 / ds)));
  const int64_t cols = int64_t(w / size0), rows = int64_t(h / size0);
  std::printf("%s: %lldx%lld px at %.3f um/px; %lldx%lld tiles of %d px read at level %d\n", path, (long long)w,
              (long long)h, mpp, (long long)cols, (long long)rows, tile, level);
  std::vector<uint32_t> argb(size_t(side) * side);
  std::vector<uint8_t> region(size_t(side) * side * 3), batch;
  int64_t n = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      openslide_read_region(slide, argb.data(), int64_t(std::lround(c * size0)), int64_t(std::lround(r * size0)), level,
                            side, side);
      if (const char* err = openslide_get_error(slide)) {
        std::string msg = std::string(path) + ": cannot read a region: " + err;
        openslide_close(slide);
        return die(msg);
      }
      for (size_t i = 0; i < argb.size(); ++i) {  // premultiplied ARGB -> RGB over white
        const uint32_t p = argb[i], a = p >> 24;
        for (int ch = 0; ch < 3; ++ch) {
          const uint32_t v = (p >> (16 - 8 * ch)) & 255;
          region[i * 3 + ch] = uint8_t(a == 0 ? 255 : std::min<uint32_t>(255, v + (255 - a)));
        }
      }
      batch.resize(size_t(n + 1) * tile * tile * 3);
      uint8_t* dst = &batch[size_t(n) * tile * tile * 3];
      if (side == tile) std::memcpy(dst, region.data(), region.size());
      else resize(region, side, dst, tile);
      if (is_glass(dst, tile)) continue;
      if (++n == batch_size) {
        if (!classify(e, batch, n, t)) return openslide_close(slide), 1;
        n = 0;
      }
    }
  openslide_close(slide);
  return n > 0 && !classify(e, batch, n, t) ? 1 : 0;
}
#endif

// A binary PPM (P6, maxval 255) of exactly t x t pixels.
bool read_ppm(const std::string& path, int t, uint8_t* out, std::string& why) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return why = "cannot open", false;
  int w = 0, h = 0, maxval = 0;
  const bool ok = std::fscanf(f, "P6 %d %d %d", &w, &h, &maxval) == 3 && std::fgetc(f) != EOF;
  if (!ok || maxval != 255) return std::fclose(f), why = "not a binary PPM (P6, maxval 255)", false;
  if (w != t || h != t) return std::fclose(f), why = "is " + std::to_string(w) + "x" + std::to_string(h) + ", the model needs " + std::to_string(t) + "x" + std::to_string(t), false;
  const size_t bytes = size_t(t) * t * 3, got = std::fread(out, 1, bytes, f);
  std::fclose(f);
  if (got != bytes) return why = "truncated", false;
  return true;
}

int run_folder(saganet_engine* e, const std::string& dir, int batch_size, Tally& t) {
  DIR* d = opendir(dir.c_str());
  if (!d) return die(dir + ": cannot open the folder");
  std::vector<std::string> files;
  while (dirent* ent = readdir(d)) {
    const std::string name = ent->d_name;
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".ppm") == 0) files.push_back(dir + "/" + name);
  }
  closedir(d);
  std::sort(files.begin(), files.end());
  if (files.empty()) return die(dir + ": no .ppm tiles in the folder");
  const int tile = saganet_engine_tile_size(e);
  std::vector<uint8_t> batch;
  int64_t n = 0;
  for (const auto& f : files) {
    batch.resize(size_t(n + 1) * tile * tile * 3);
    std::string why;
    if (!read_ppm(f, tile, &batch[size_t(n) * tile * tile * 3], why)) {
      std::fprintf(stderr, "scanner: %s: %s; skipped\n", f.c_str(), why.c_str());
      continue;
    }
    if (++n == batch_size) {
      if (!classify(e, batch, n, t)) return 1;
      n = 0;
    }
  }
  return n > 0 && !classify(e, batch, n, t) ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: scanner BUNDLE SLIDE|FOLDER [--mpp X] [--batch N] [--threads N]\n");
    return 2;
  }
  double mpp = 0;
  int batch = 32, threads = 0;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) return die("missing value after " + a);
    if (a == "--mpp") mpp = std::atof(argv[++i]);
    else if (a == "--batch") batch = std::atoi(argv[++i]);
    else if (a == "--threads") threads = std::atoi(argv[++i]);
    else return die("unknown option " + a);
  }
  if (batch < 1 || batch > 1024) return die("--batch must be 1..1024");
  saganet_engine* e = saganet_engine_create(argv[1], threads);
  if (!e) return die(saganet_last_error());
  const int k = saganet_engine_num_classes(e);
  Tally t{std::vector<long>(size_t(k)), std::vector<double>(size_t(k))};
  struct stat st{};
  int rc;
  if (stat(argv[2], &st) == 0 && S_ISDIR(st.st_mode)) {
    rc = run_folder(e, argv[2], batch, t);
  } else {
#ifdef SCANNER_WITH_OPENSLIDE
    rc = run_slide(e, argv[2], mpp, batch, t);
#else
    rc = die(std::string(argv[2]) + ": this scanner was built without OpenSlide; give a folder of PPM tiles");
#endif
  }
  if (rc == 0) {
    long used = 0;
    for (long c : t.counts) used += c;
    std::printf("%ld tiles classified, %ld with under 5%% valid area not counted\n", t.tiles, t.low_valid);
    for (int c = 0; c < k; ++c)
      std::printf("  %-12s %6ld tiles   mean probability %.4f\n", saganet_engine_class_name(e, c), t.counts[size_t(c)],
                  used ? t.prob_sum[size_t(c)] / used : 0.0);
    if (used == 0) std::printf("no tile had enough valid area for a call\n");
  }
  saganet_engine_destroy(e);
  return rc;
}
