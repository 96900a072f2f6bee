// libFuzzer target over libsaganet's public C and C++ functions, the bundle manifest parser and the
// tile preprocessing the engine runs on every tile (built with SAGANET_FUZZ=ON; scripts/fuzz.sh).
// The first byte picks the target; the rest is its input. Every path must end in a status, an
// exception of the documented type, or a result, never in a crash, a leak or undefined behaviour.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/manifest.h"
#include "engine/preprocess.h"
#include "saganet/saganet.h"
#include "saganet/saganet.hpp"

namespace {

struct Bytes {  // reads the fuzzer's input front to back; zeros once it runs out
  const uint8_t* p;
  size_t n;
  uint8_t u8() { return n ? (--n, *p++) : 0; }
  float f32() {
    float v = 0;
    uint8_t b[4] = {u8(), u8(), u8(), u8()};
    std::memcpy(&v, b, 4);
    return v;
  }
};

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_c_api: %s\n", what);
    std::abort();
  }
}

void fuzz_manifest(const uint8_t* data, size_t size) {
  try {
    const saganet::BundleManifest m = saganet::parse_manifest(std::string(reinterpret_cast<const char*>(data), size), "m");
    check(m.tile >= 1 && !m.classes.empty() && m.mpp > 0 && m.files.count("weights.safetensors"), "accepted an invalid manifest");
  } catch (const saganet::Error& e) {
    check(e.status() == SAGANET_INVALID_ARGUMENT && std::strlen(e.what()) > 0, "manifest error without a message");
  }
}

// The C function with buffers of the declared sizes, any values, any dims (small, zero or negative),
// any layout and eps, and NULL pointers.
void fuzz_c_pool(Bytes in) {
  const int64_t dims[4] = {int8_t(in.u8()) % 6, int8_t(in.u8()) % 6, int8_t(in.u8()) % 9, int8_t(in.u8()) % 9};
  const int layout = in.u8() % 3;  // 2 is not a layout
  const float eps = in.f32();
  const uint8_t nulls = in.u8();
  const bool valid = dims[0] > 0 && dims[1] > 0 && dims[2] > 0 && dims[3] > 0;
  const size_t hw = valid ? size_t(dims[2] * dims[3]) : 1, b = valid ? size_t(dims[0]) : 1, c = valid ? size_t(dims[1]) : 1;
  std::vector<float> f(b * c * hw), g(b * hw), m(b * hw), z(b * c), w(b * hw);
  for (auto* v : {&f, &g, &m})
    for (auto& x : *v) x = in.f32();
  const saganet_status s = saganet_gate_mask_pool(nulls & 1 ? nullptr : f.data(), saganet_layout(layout),
                                                  nulls & 2 ? nullptr : g.data(), nulls & 4 ? nullptr : m.data(), dims[0],
                                                  dims[1], dims[2], dims[3], eps, nulls & 8 ? nullptr : z.data(),
                                                  nulls & 16 ? nullptr : w.data());
  const bool must_pass = valid && !(nulls & 15) && layout < 2 && eps > 0 && std::isfinite(eps);
  if (s == SAGANET_OK) {
    check(must_pass, "accepted invalid arguments");
    check(saganet_last_error()[0] == '\0', "success left an error message");
  } else {
    check(std::strlen(saganet_last_error()) > 0, "failure without a message");
  }
}

// The C++ API with buffers whose sizes need not match the dims: it must throw, never read past them.
void fuzz_cpp_pool(Bytes in) {
  const int64_t dims[4] = {int8_t(in.u8()) % 5, int8_t(in.u8()) % 5, int8_t(in.u8()) % 7, int8_t(in.u8()) % 7};
  std::vector<float> f(in.u8() % 64), g(in.u8() % 32), m(in.u8() % 32);
  for (auto* v : {&f, &g, &m})
    for (auto& x : *v) x = float(in.u8()) / 255.f;
  std::vector<float> w;
  try {
    const auto z = saganet::gate_mask_pool(f, saganet_layout(in.u8() % 2), g, m, dims[0], dims[1], dims[2], dims[3],
                                           1e-6f, in.u8() % 2 ? &w : nullptr);
    check(int64_t(z.size()) == dims[0] * dims[1], "z has the wrong size");
  } catch (const saganet::Error&) {
  }
}

// The engine's per-tile preprocessing with any mask configuration and any pixels.
void fuzz_preprocess(Bytes in) {
  saganet::MaskConfig c;
  c.tissue_od = in.f32();
  c.focus_window = int(int8_t(in.u8()));
  c.focus_min = in.f32();
  c.focus_relative = in.f32();
  c.focus_floor = in.f32();
  c.nuclei_threshold = in.f32();
  c.cell_window = int(int8_t(in.u8()));
  c.cell_density_min = in.f32();
  c.min_region = int(int16_t(in.u8() << 8 | in.u8()));
  const int h = in.u8() % 40, w = in.u8() % 40;
  std::vector<uint8_t> rgb(size_t(h) * w * 3), valid(size_t(h) * w);
  for (auto& x : rgb) x = in.u8();
  try {
    saganet::valid_area_mask(rgb.data(), h, w, c, valid.data());
    for (uint8_t v : valid) check(v <= 1, "mask value other than 0 or 1");
  } catch (const std::invalid_argument&) {
  }
  const float mean[3] = {0.5f, 0.5f, 0.5f}, sd[3] = {0.25f, 0.25f, 0.25f};
  std::vector<float> image(size_t(h) * w * 3);
  saganet::normalise(rgb.data(), h, w, mean, sd, image.data());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check(std::strlen(saganet_version()) > 0 && std::strlen(saganet_build_info()) > 0, "empty version");
  if (size == 0) return 0;
  const Bytes rest{data + 1, size - 1};
  switch (data[0] % 4) {
    case 0: fuzz_manifest(rest.p, rest.n); break;
    case 1: fuzz_c_pool(rest); break;
    case 2: fuzz_cpp_pool(rest); break;
    default: fuzz_preprocess(rest); break;
  }
  return 0;
}
