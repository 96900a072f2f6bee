// A check of the installed kernels library (find_package(saganet)): prints the build,
// pools a feature map whose answer is known through the C++ API, and shows how errors come back,
// through the C API (status + message) and the C++ API (saganet::Error). Exit 0 when all is right.
// The scanner program itself is scanner.cpp.
#include <saganet/saganet.h>
#include <saganet/saganet.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const int64_t B = 2, C = 3, H = 4, W = 5;
  std::vector<float> features(B * C * H * W), gate(B * H * W), mask(B * H * W);
  std::printf("%s\n", saganet::build_info().c_str());
  // Channel c of image b is the constant 10*b + c where the mask is 1, and 1000 (debris) where it
  // is 0: the masked pooling must return 10*b + c exactly and never see the 1000s.
  for (int64_t b = 0; b < B; ++b)
    for (int64_t p = 0; p < H * W; ++p) {
      const bool valid = p % 3 != 0;
      mask[b * H * W + p] = valid ? 1.f : 0.f;
      gate[b * H * W + p] = 0.5f * static_cast<float>(p % 4);
      for (int64_t c = 0; c < C; ++c)
        features[(b * C + c) * H * W + p] = valid ? static_cast<float>(10 * b + c) : 1000.f;
    }
  bool ok = true;
  try {
    const std::vector<float> z = saganet::gate_mask_pool(features, SAGANET_NCHW, gate, mask, B, C, H, W);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) {
        std::printf("z[%lld][%lld] = %.4f\n", static_cast<long long>(b), static_cast<long long>(c), z[b * C + c]);
        ok = ok && std::fabs(z[b * C + c] - static_cast<float>(10 * b + c)) < 1e-3f;
      }
  } catch (const saganet::Error& e) {
    std::fprintf(stderr, "scanner: %s\n", e.what());
    return 1;
  }
  // C API: a status and a message, nothing thrown.
  std::vector<float> z(B * C);
  const saganet_status s = saganet_gate_mask_pool(features.data(), SAGANET_NCHW, gate.data(), mask.data(), B, -1, H, W,
                                                  1e-6f, z.data(), nullptr);
  std::printf("C API, bad call -> status %d: %s\n", static_cast<int>(s), saganet_last_error());
  ok = ok && s == SAGANET_INVALID_ARGUMENT;
  // C++ API: a short buffer is refused with saganet::Error instead of being read past its end.
  try {
    saganet::gate_mask_pool(std::vector<float>(7), SAGANET_NCHW, gate, mask, B, C, H, W);
    ok = false;
  } catch (const saganet::Error& e) {
    std::printf("C++ API, short buffer -> saganet::Error: %s\n", e.what());
  }
  std::printf(ok ? "scanner: OK\n" : "scanner: WRONG RESULT\n");
  return ok ? 0 : 1;
}
