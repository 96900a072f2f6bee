// The C and C++ APIs over the kernels. The C functions catch everything: no exception crosses
// the C boundary; the message is kept per thread for saganet_last_error().
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "kernels/gate_mask_pool.h"
#include "saganet/saganet.h"
#include "saganet/saganet.hpp"

#ifndef SAGANET_VERSION
#define SAGANET_VERSION "unknown"
#endif
#ifndef SAGANET_CUDA_ARCHS
#define SAGANET_CUDA_ARCHS "none"
#endif

static_assert(sizeof(saganet_layout) == sizeof(int), "saganet_layout is read as an int");

namespace {
thread_local std::string last_error;

saganet_status fail(saganet_status s, const std::string& msg) {
  last_error = msg;
  return s;
}

bool checked_mul(int64_t a, int64_t b, int64_t* out) {
  if (a < 0 || b < 0 || (a != 0 && b > std::numeric_limits<int64_t>::max() / a)) return false;
  *out = a * b;
  return true;
}
}  // namespace

extern "C" {

const char* saganet_version(void) { return SAGANET_VERSION; }

const char* saganet_build_info(void) {
  static const std::string info = std::string("saganet ") + SAGANET_VERSION + "; compiler " +
#if defined(__clang__)
                                  "clang " + __clang_version__ +
#elif defined(__GNUC__)
                                  "gcc " + __VERSION__ +
#else
                                  "unknown" +
#endif
#ifdef _OPENMP
                                  "; OpenMP " + std::to_string(_OPENMP) +
#else
                                  "; no OpenMP" +
#endif
                                  "; CUDA kernels " + (saganet::cuda_compiled() ? "compiled" : "not compiled") +
                                  "; CUDA archs " + SAGANET_CUDA_ARCHS;
  return info.c_str();
}

const char* saganet_last_error(void) { return last_error.c_str(); }

// For the other saganet libraries (libsaganet_engine), so that one saganet_last_error() serves all.
SAGANET_API void saganet_internal_set_last_error(const char* message) { last_error = message ? message : ""; }

saganet_status saganet_gate_mask_pool(const float* features, saganet_layout layout, const float* gate_logits,
                                      const float* mask, int64_t batch, int64_t channels, int64_t height, int64_t width,
                                      float eps, float* z, float* weights) {
  try {
    last_error.clear();
    if (!features || !gate_logits || !mask || !z)
      return fail(SAGANET_INVALID_ARGUMENT, "saganet_gate_mask_pool: features, gate_logits, mask and z must not be NULL");
    if (batch <= 0 || channels <= 0 || height <= 0 || width <= 0)
      return fail(SAGANET_INVALID_ARGUMENT, "saganet_gate_mask_pool: batch, channels, height, width must be positive, got " +
                                                std::to_string(batch) + ", " + std::to_string(channels) + ", " +
                                                std::to_string(height) + ", " + std::to_string(width));
    int64_t hw, chw, n;
    if (!checked_mul(height, width, &hw) || !checked_mul(hw, channels, &chw) || !checked_mul(chw, batch, &n))
      return fail(SAGANET_INVALID_ARGUMENT, "saganet_gate_mask_pool: sizes overflow");
    // A C caller may pass any int as the enum; read its bits as an int, since loading an enum value
    // outside its range is undefined behaviour in C++ (found by the fuzz target).
    int layout_value;
    std::memcpy(&layout_value, &layout, sizeof layout_value);
    if (layout_value != SAGANET_NCHW && layout_value != SAGANET_NHWC)
      return fail(SAGANET_INVALID_ARGUMENT, "saganet_gate_mask_pool: layout must be SAGANET_NCHW or SAGANET_NHWC");
    if (!(eps > 0.f) || !std::isfinite(eps))
      return fail(SAGANET_INVALID_ARGUMENT, "saganet_gate_mask_pool: eps must be positive and finite");
    saganet::GateMaskPoolArgs a;
    a.features = features;
    a.f = layout == SAGANET_NCHW ? saganet::View4{batch, channels, height, width, chw, hw, width, 1}
                                 : saganet::View4{batch, channels, height, width, chw, 1, width * channels, channels};
    a.gate_logits = gate_logits;
    a.g_sn = hw, a.g_sh = width, a.g_sw = 1;
    a.mask = mask;
    a.m_sn = hw, a.m_sh = width, a.m_sw = 1;
    a.eps = eps;
    const std::string bad = saganet::validate(a);
    if (!bad.empty()) return fail(SAGANET_INVALID_ARGUMENT, "saganet_gate_mask_pool: " + bad);
    std::vector<float> scratch;
    float* w = weights;
    if (!w) {
      scratch.resize(static_cast<size_t>(batch * hw));
      w = scratch.data();
    }
    saganet::gate_mask_pool_forward_cpu(a, z, w);
    return SAGANET_OK;
  } catch (const std::exception& e) {
    return fail(SAGANET_RUNTIME_ERROR, std::string("saganet_gate_mask_pool: ") + e.what());
  } catch (...) {
    return fail(SAGANET_RUNTIME_ERROR, "saganet_gate_mask_pool: unknown error");
  }
}

}  // extern "C"

namespace saganet {

std::string version() { return saganet_version(); }
std::string build_info() { return saganet_build_info(); }

std::vector<float> gate_mask_pool(const std::vector<float>& features, saganet_layout layout,
                                  const std::vector<float>& gate_logits, const std::vector<float>& mask, int64_t batch,
                                  int64_t channels, int64_t height, int64_t width, float eps,
                                  std::vector<float>* weights) {
  int64_t hw = 0, chw = 0, n = 0;
  if (batch <= 0 || channels <= 0 || height <= 0 || width <= 0 || !checked_mul(height, width, &hw) ||
      !checked_mul(hw, channels, &chw) || !checked_mul(chw, batch, &n))
    throw Error(SAGANET_INVALID_ARGUMENT, "gate_mask_pool: sizes must be positive and not overflow");
  if (static_cast<int64_t>(features.size()) != n)
    throw Error(SAGANET_INVALID_ARGUMENT, "gate_mask_pool: features holds " + std::to_string(features.size()) +
                                              " values, B*C*H*W = " + std::to_string(n));
  for (const auto* v : {&gate_logits, &mask})
    if (static_cast<int64_t>(v->size()) != batch * hw)
      throw Error(SAGANET_INVALID_ARGUMENT, "gate_mask_pool: gate_logits and mask must hold B*H*W = " +
                                                std::to_string(batch * hw) + " values, got " + std::to_string(v->size()));
  std::vector<float> z(static_cast<size_t>(batch * channels));
  if (weights) weights->resize(static_cast<size_t>(batch * hw));
  const saganet_status s = saganet_gate_mask_pool(features.data(), layout, gate_logits.data(), mask.data(), batch,
                                                  channels, height, width, eps, z.data(),
                                                  weights ? weights->data() : nullptr);
  if (s != SAGANET_OK) throw Error(s, saganet_last_error());
  return z;
}

}  // namespace saganet
