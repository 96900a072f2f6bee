// C++ unit tests of the CPU kernels and the C API (ctest; also run under ASan/UBSan).
// A naive double-precision reference decides what is right.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/gate_mask_pool.h"
#include "saganet/saganet.h"
#include "saganet/saganet.hpp"

static int failures = 0;
#define CHECK(cond, ...)                                        \
  do {                                                          \
    if (!(cond)) {                                              \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                        \
      std::fprintf(stderr, "\n");                               \
      ++failures;                                               \
    }                                                           \
  } while (0)

namespace {

struct Case {
  int64_t B, C, H, W;
};

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Reference on NCHW-indexed accessors.
void reference(const Case& k, const std::vector<float>& F, const std::vector<float>& G, const std::vector<float>& M,
               const std::vector<float>& gz, float eps, std::vector<double>& z, std::vector<double>& dF,
               std::vector<double>& dG) {
  const int64_t HW = k.H * k.W;
  z.assign(k.B * k.C, 0), dF.assign(k.B * k.C * HW, 0), dG.assign(k.B * HW, 0);
  for (int64_t b = 0; b < k.B; ++b) {
    double D = eps;
    for (int64_t p = 0; p < HW; ++p) D += sig(G[b * HW + p]) * M[b * HW + p];
    for (int64_t c = 0; c < k.C; ++c) {
      double s = 0;
      for (int64_t p = 0; p < HW; ++p) s += double(F[(b * k.C + c) * HW + p]) * sig(G[b * HW + p]) * M[b * HW + p];
      z[b * k.C + c] = s / D;
    }
    for (int64_t p = 0; p < HW; ++p) {
      const double sg = sig(G[b * HW + p]), w = sg * M[b * HW + p];
      double dw = 0;
      for (int64_t c = 0; c < k.C; ++c) {
        dF[(b * k.C + c) * HW + p] = gz[b * k.C + c] * w / D;
        dw += gz[b * k.C + c] * (F[(b * k.C + c) * HW + p] - z[b * k.C + c]) / D;
      }
      dG[b * HW + p] = dw * M[b * HW + p] * sg * (1 - sg);
    }
  }
}

// Error relative to the largest expected value, with a floor: a gradient that is ~0 everywhere
// (one pixel: z equals F) is compared absolutely.
double max_rel(const std::vector<float>& got, const std::vector<double>& want) {
  double scale = 1e-3, err = 0;
  for (double v : want) scale = std::max(scale, std::abs(v));
  for (size_t i = 0; i < got.size(); ++i) err = std::max(err, std::abs(got[i] - want[i]));
  return err / scale;
}

void check_case(const Case& k, bool nhwc, bool bool_mask, std::mt19937& rng) {
  const int64_t HW = k.H * k.W;
  std::normal_distribution<float> n01;
  std::uniform_real_distribution<float> u01;
  std::vector<float> F(k.B * k.C * HW), G(k.B * HW), M(k.B * HW), gz(k.B * k.C);
  for (auto& v : F) v = n01(rng);
  for (auto& v : G) v = 2 * n01(rng);
  for (auto& v : M) v = bool_mask ? (u01(rng) < 0.7f ? 1.f : 0.f) : u01(rng);
  for (auto& v : gz) v = n01(rng);
  std::vector<double> zr, dFr, dGr;
  reference(k, F, G, M, gz, 1e-6f, zr, dFr, dGr);

  // Lay F out as asked; the kernels see it through strides.
  std::vector<float> Fl(F.size());
  saganet::View4 v{k.B, k.C, k.H, k.W, k.C * HW, HW, k.W, 1};
  if (nhwc) {
    v = saganet::View4{k.B, k.C, k.H, k.W, k.C * HW, 1, k.W * k.C, k.C};
    for (int64_t b = 0; b < k.B; ++b)
      for (int64_t c = 0; c < k.C; ++c)
        for (int64_t p = 0; p < HW; ++p) Fl[(b * HW + p) * k.C + c] = F[(b * k.C + c) * HW + p];
  } else {
    Fl = F;
  }
  std::vector<uint8_t> Mb(M.size());
  for (size_t i = 0; i < M.size(); ++i) Mb[i] = M[i] > 0.5f;
  saganet::GateMaskPoolArgs a;
  a.features = Fl.data();
  a.f = v;
  a.gate_logits = G.data();
  a.g_sn = HW, a.g_sh = k.W, a.g_sw = 1;
  a.mask = bool_mask ? static_cast<const void*>(Mb.data()) : M.data();
  a.mask_is_bool = bool_mask;
  a.m_sn = HW, a.m_sh = k.W, a.m_sw = 1;
  CHECK(saganet::validate(a).empty(), "%s", saganet::validate(a).c_str());
  std::vector<float> z(k.B * k.C, NAN), w(k.B * HW, NAN), dFl(F.size(), NAN), dG(k.B * HW, NAN);
  saganet::gate_mask_pool_forward_cpu(a, z.data(), w.data());
  saganet::gate_mask_pool_backward_cpu(a, gz.data(), z.data(), dFl.data(), v, dG.data());
  std::vector<float> dF(F.size());
  for (int64_t b = 0; b < k.B; ++b)
    for (int64_t c = 0; c < k.C; ++c)
      for (int64_t p = 0; p < HW; ++p)
        dF[(b * k.C + c) * HW + p] = nhwc ? dFl[(b * HW + p) * k.C + c] : dFl[(b * k.C + c) * HW + p];
  const char* lay = nhwc ? "NHWC" : "NCHW";
  CHECK(max_rel(z, zr) < 1e-5, "z B=%lld C=%lld %lldx%lld %s: rel err %g", (long long)k.B, (long long)k.C,
        (long long)k.H, (long long)k.W, lay, max_rel(z, zr));
  CHECK(max_rel(dF, dFr) < 1e-5, "dF %s: rel err %g", lay, max_rel(dF, dFr));
  CHECK(max_rel(dG, dGr) < 1e-4, "dG C=%lld %lldx%lld %s bool=%d: rel err %g", (long long)k.C, (long long)k.H, (long long)k.W, lay, (int)bool_mask, max_rel(dG, dGr));
}

void test_kernels() {
  std::mt19937 rng(1234);
  for (const Case& k : {Case{1, 1, 1, 1}, Case{1, 1, 7, 5}, Case{2, 3, 5, 7}, Case{3, 300, 4, 4}, Case{2, 17, 33, 31},
                        Case{4, 64, 14, 14}})
    for (bool nhwc : {false, true})
      for (bool bm : {false, true}) check_case(k, nhwc, bm, rng);
}

void test_c_api() {
  const int64_t B = 2, C = 3, H = 4, W = 5;
  std::vector<float> F(B * C * H * W, 1.f), G(B * H * W, 0.f), M(B * H * W, 1.f), z(B * C);
  CHECK(saganet_gate_mask_pool(F.data(), SAGANET_NCHW, G.data(), M.data(), B, C, H, W, 1e-6f, z.data(), nullptr) ==
            SAGANET_OK,
        "%s", saganet_last_error());
  CHECK(std::abs(z[0] - 1.f) < 1e-5, "constant features pool to themselves, got %g", z[0]);
  CHECK(saganet_gate_mask_pool(nullptr, SAGANET_NCHW, G.data(), M.data(), B, C, H, W, 1e-6f, z.data(), nullptr) ==
            SAGANET_INVALID_ARGUMENT,
        "null features accepted");
  CHECK(std::strstr(saganet_last_error(), "NULL") != nullptr, "message: %s", saganet_last_error());
  CHECK(saganet_gate_mask_pool(F.data(), SAGANET_NCHW, G.data(), M.data(), B, 0, H, W, 1e-6f, z.data(), nullptr) ==
            SAGANET_INVALID_ARGUMENT,
        "zero channels accepted");
  CHECK(saganet_gate_mask_pool(F.data(), (saganet_layout)7, G.data(), M.data(), B, C, H, W, 1e-6f, z.data(), nullptr) ==
            SAGANET_INVALID_ARGUMENT,
        "bad layout accepted");
  CHECK(saganet_gate_mask_pool(F.data(), SAGANET_NCHW, G.data(), M.data(), B, C, H, W, -1.f, z.data(), nullptr) ==
            SAGANET_INVALID_ARGUMENT,
        "negative eps accepted");
  CHECK(saganet_gate_mask_pool(F.data(), SAGANET_NCHW, G.data(), M.data(), int64_t(1) << 40, int64_t(1) << 40, H, W,
                               1e-6f, z.data(), nullptr) == SAGANET_INVALID_ARGUMENT,
        "overflowing sizes accepted");
  // C++ API: a short buffer throws instead of reading past it.
  bool threw = false;
  try {
    saganet::gate_mask_pool(std::vector<float>(5), SAGANET_NCHW, G, M, B, C, H, W);
  } catch (const saganet::Error& e) {
    threw = e.status() == SAGANET_INVALID_ARGUMENT && std::strstr(e.what(), "features holds 5") != nullptr;
  }
  CHECK(threw, "short features buffer not refused");
  CHECK(std::strlen(saganet_build_info()) > 10 && std::strcmp(saganet_version(), "") != 0, "build info");
}

}  // namespace

int main() {
  test_kernels();
  test_c_api();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("test_kernels: all checks passed (%s)\n", saganet_build_info());
  return 0;
}
