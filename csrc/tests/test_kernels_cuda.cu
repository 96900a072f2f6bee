// CUDA kernels against the CPU kernels (themselves checked against a double reference in
// test_kernels.cpp). Outputs are poisoned with NaN before each launch so unwritten elements show.
// Exit code 77 (ctest: skipped) when no CUDA device is present, as on the CPU-only CI machine.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/gate_mask_pool.h"

#define CUDA_OK(x)                                                                          \
  do {                                                                                      \
    cudaError_t e_ = (x);                                                                   \
    if (e_ != cudaSuccess) {                                                                \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

static int failures = 0;

template <typename T> static T* upload(const std::vector<T>& v) {
  T* d = nullptr;
  CUDA_OK(cudaMalloc(&d, v.size() * sizeof(T) + 16));
  CUDA_OK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}
template <typename T> static std::vector<T> download(const T* d, size_t n) {
  std::vector<T> v(n);
  CUDA_OK(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}
static float* poisoned(size_t n) {
  float* d = upload(std::vector<float>(n, NAN));
  return d;
}

static double max_rel(const std::vector<float>& got, const std::vector<float>& want) {
  double scale = 1e-3, err = 0;  // floor: near-zero gradients compare absolutely
  for (float v : want) scale = std::max(scale, (double)std::abs(v));
  for (size_t i = 0; i < got.size(); ++i) err = std::max(err, (double)std::abs(got[i] - want[i]));
  return std::isnan(err) ? INFINITY : err / scale;
}

static void run_case(int64_t B, int64_t C, int64_t H, int64_t W, bool nhwc, std::mt19937& rng) {
  const int64_t HW = H * W;
  std::normal_distribution<float> n01;
  std::uniform_real_distribution<float> u01;
  std::vector<float> F(B * C * HW), G(B * HW), M(B * HW), gz(B * C);
  for (auto& v : F) v = n01(rng);
  for (auto& v : G) v = 2 * n01(rng);
  for (auto& v : M) v = u01(rng);
  for (auto& v : gz) v = n01(rng);
  saganet::View4 v = nhwc ? saganet::View4{B, C, H, W, C * HW, 1, W * C, C} : saganet::View4{B, C, H, W, C * HW, HW, W, 1};
  saganet::GateMaskPoolArgs a;
  a.f = v, a.g_sn = HW, a.g_sh = W, a.g_sw = 1, a.m_sn = HW, a.m_sh = W, a.m_sw = 1;
  // CPU answer
  a.features = F.data(), a.gate_logits = G.data(), a.mask = M.data();
  std::vector<float> z(B * C), w(B * HW), dF(F.size()), dG(B * HW);
  saganet::gate_mask_pool_forward_cpu(a, z.data(), w.data());
  saganet::gate_mask_pool_backward_cpu(a, gz.data(), z.data(), dF.data(), v, dG.data());
  // CUDA answer
  float *dFin = upload(F), *dGin = upload(G), *dMin = upload(M), *dgz = upload(gz), *dz_cpu = upload(z);
  a.features = dFin, a.gate_logits = dGin, a.mask = dMin;
  float *dz = poisoned(B * C), *dw = poisoned(B * HW), *ws = poisoned(B + B * HW), *ddF = poisoned(F.size()),
        *ddG = poisoned(B * HW);
  std::string err = saganet::gate_mask_pool_forward_cuda(a, dz, dw, ws, nullptr);
  if (err.empty()) err = saganet::gate_mask_pool_backward_cuda(a, dgz, dz_cpu, ddF, v, ddG, ws, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  const char* lay = nhwc ? "NHWC" : "NCHW";
  if (!err.empty()) {
    std::fprintf(stderr, "launch failed: %s\n", err.c_str());
    ++failures;
  }
  const double ez = max_rel(download(dz, B * C), z), ew = max_rel(download(dw, B * HW), w),
               edF = max_rel(download(ddF, F.size()), dF), edG = max_rel(download(ddG, B * HW), dG);
  if (!(ez < 1e-4 && ew < 1e-5 && edF < 1e-4 && edG < 1e-3)) {
    std::fprintf(stderr, "B=%lld C=%lld %lldx%lld %s: rel err z %g w %g dF %g dG %g\n", (long long)B, (long long)C,
                 (long long)H, (long long)W, lay, ez, ew, edF, edG);
    ++failures;
  }
  for (void* p : {(void*)dFin, (void*)dGin, (void*)dMin, (void*)dgz, (void*)dz_cpu, (void*)dz, (void*)dw, (void*)ws,
                  (void*)ddF, (void*)ddG})
    CUDA_OK(cudaFree(p));
}

int main() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("test_kernels_cuda: no CUDA device, skipped\n");
    return 77;
  }
  std::mt19937 rng(99);
  for (auto s : std::vector<std::vector<int64_t>>{{1, 1, 1, 1}, {2, 3, 5, 7}, {3, 300, 4, 4}, {2, 17, 33, 31},
                                                  {64, 256, 28, 28}, {8, 512, 14, 14}})
    for (bool nhwc : {false, true}) run_case(s[0], s[1], s[2], s[3], nhwc, rng);
  if (failures) return 1;
  std::printf("test_kernels_cuda: all cases match the CPU kernels\n");
  return 0;
}
