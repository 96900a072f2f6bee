// CUDA kernels for gate-mask pooling: F read once, 16-byte loads where the layout allows,
// warp/block reductions, float32 accumulation for float32, float16 and bfloat16 inputs, launched on
// the caller's stream. No libtorch: see gate_mask_pool.h for the contract.
#include "kernels/gate_mask_pool.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace saganet {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float block_sum(float v) {  // result valid in every thread
  __shared__ float part[kWarps];
  __shared__ float total;
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < kWarps ? part[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + __expf(-x)); }

__device__ __forceinline__ float mask_at(const GateMaskPoolArgs& a, int64_t b, int64_t y, int64_t x) {
  const int64_t i = b * a.m_sn + y * a.m_sh + x * a.m_sw;
  return a.mask_is_bool ? (static_cast<const uint8_t*>(a.mask)[i] ? 1.f : 0.f) : static_cast<const float*>(a.mask)[i];
}

// grid (B): weights[b,p] = sigmoid(G) * M; denom[b] = sum + eps.
__global__ void weights_kernel(GateMaskPoolArgs a, float* __restrict__ weights, float* __restrict__ denom) {
  const int64_t b = blockIdx.x, W = a.f.w, HW = a.f.h * W;
  float s = 0.f;
  for (int64_t p = threadIdx.x; p < HW; p += blockDim.x) {
    const int64_t y = p / W, x = p % W;
    const float v = sigmoidf(static_cast<const float*>(a.gate_logits)[b * a.g_sn + y * a.g_sh + x * a.g_sw]) * mask_at(a, b, y, x);
    weights[b * HW + p] = v;
    s += v;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) denom[b] = s + a.eps;
}

// 16 bytes of T as floats.
template <typename T> struct Vec16 {
  static constexpr int N = 16 / sizeof(T);
  __device__ __forceinline__ static void load(const T* p, float* out) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_f(e[i]);
  }
};

// NCHW: grid (ceil(C / warps), B); one warp per channel, lanes over pixels.
template <typename T>
__global__ void pool_nchw_kernel(GateMaskPoolArgs a, const float* __restrict__ weights, const float* __restrict__ denom,
                                 float* __restrict__ z, bool vec) {
  const int64_t b = blockIdx.y, C = a.f.c, HW = a.f.h * a.f.w;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (c >= C) return;
  const T* F = static_cast<const T*>(a.features) + b * a.f.sn + c * a.f.sc;
  const float* w = weights + b * HW;
  float s = 0.f;
  if (vec) {  // HW a multiple of N and both rows 16-byte aligned (checked by the launcher)
    constexpr int N = Vec16<T>::N;
    for (int64_t p = static_cast<int64_t>(lane) * N; p < HW; p += 32 * N) {
      float fv[N];
      Vec16<T>::load(F + p, fv);
#pragma unroll
      for (int i = 0; i < N; i += 4) {
        const float4 wv = *reinterpret_cast<const float4*>(w + p + i);
        s += fv[i] * wv.x + fv[i + 1] * wv.y + fv[i + 2] * wv.z + fv[i + 3] * wv.w;
      }
    }
  } else {
    for (int64_t p = lane; p < HW; p += 32) s += to_f(F[p]) * w[p];
  }
  s = warp_sum(s);
  if (lane == 0) z[b * C + c] = s / denom[b];
}

// NHWC: grid (ceil(C / threads), B, splits); threads over channels (coalesced), pixels split
// across blockIdx.z and combined with atomicAdd into z (zeroed first).
template <typename T>
__global__ void pool_nhwc_kernel(GateMaskPoolArgs a, const float* __restrict__ weights, const float* __restrict__ denom,
                                 float* __restrict__ z) {
  const int64_t b = blockIdx.y, C = a.f.c, HW = a.f.h * a.f.w;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int64_t per = (HW + gridDim.z - 1) / gridDim.z, p0 = blockIdx.z * per, p1 = min(HW, p0 + per);
  const T* F = static_cast<const T*>(a.features) + b * a.f.sn + c;
  float s = 0.f;
  for (int64_t p = p0; p < p1; ++p) s += to_f(F[p * C]) * weights[b * HW + p];
  atomicAdd(z + b * C + c, s / denom[b]);
}

// Any strides: one thread per (b, c).
template <typename T>
__global__ void pool_strided_kernel(GateMaskPoolArgs a, const float* __restrict__ weights,
                                    const float* __restrict__ denom, float* __restrict__ z) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t C = a.f.c, H = a.f.h, W = a.f.w;
  if (i >= a.f.n * C) return;
  const int64_t b = i / C, c = i % C;
  const T* F = static_cast<const T*>(a.features);
  float s = 0.f;
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) s += to_f(F[b * a.f.sn + c * a.f.sc + y * a.f.sh + x * a.f.sw]) * weights[(b * H + y) * W + x];
  z[i] = s / denom[b];
}

// t = sum_c dz[b,c] (F[b,c,p] - z[b,c]): z subtracted inside the sum, which avoids cancellation.
__device__ __forceinline__ void finish_gate(const GateMaskPoolArgs& a, int64_t b, int64_t p, float t, float denom,
                                            float* grad_gate) {
  const int64_t W = a.f.w, y = p / W, x = p % W, HW = a.f.h * W;
  const float s = sigmoidf(static_cast<const float*>(a.gate_logits)[b * a.g_sn + y * a.g_sh + x * a.g_sw]);
  grad_gate[b * HW + p] = t / denom * mask_at(a, b, y, x) * s * (1.f - s);
}

// Backward, NCHW or any strides: one thread per (b, pixel), loop over channels; reads of F and
// writes of dF are coalesced across the pixels of a warp when each plane is contiguous.
template <typename T>
__global__ void backward_pixel_kernel(GateMaskPoolArgs a, View4 gf, const float* __restrict__ gz,
                                      const float* __restrict__ z, const float* __restrict__ weights,
                                      const float* __restrict__ denom, T* __restrict__ dF, float* __restrict__ grad_gate) {
  const int64_t b = blockIdx.y, C = a.f.c, W = a.f.w, HW = a.f.h * W;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= HW) return;
  const int64_t y = p / W, x = p % W;
  const T* F = static_cast<const T*>(a.features);
  const float s = weights[b * HW + p] / denom[b];
  float t = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    const float g = gz[b * C + c];
    t += g * (to_f(F[b * a.f.sn + c * a.f.sc + y * a.f.sh + x * a.f.sw]) - z[b * C + c]);
    dF[b * gf.sn + c * gf.sc + y * gf.sh + x * gf.sw] = from_f<T>(g * s);
  }
  finish_gate(a, b, p, t, denom[b], grad_gate);
}

// Backward, NHWC: one warp per (b, pixel), lanes over the contiguous channels.
template <typename T>
__global__ void backward_nhwc_kernel(GateMaskPoolArgs a, View4 gf, const float* __restrict__ gz,
                                     const float* __restrict__ z, const float* __restrict__ weights,
                                     const float* __restrict__ denom, T* __restrict__ dF, float* __restrict__ grad_gate) {
  const int64_t b = blockIdx.y, C = a.f.c, HW = a.f.h * a.f.w;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (p >= HW) return;
  const T* F = static_cast<const T*>(a.features) + b * a.f.sn + p * C;
  T* D = dF + b * gf.sn + p * C;
  const float s = weights[b * HW + p] / denom[b];
  float t = 0.f;
  for (int64_t c = lane; c < C; c += 32) {
    const float g = gz[b * C + c];
    t += g * (to_f(F[c]) - z[b * C + c]);
    D[c] = from_f<T>(g * s);
  }
  t = warp_sum(t);
  if (lane == 0) finish_gate(a, b, p, t, denom[b], grad_gate);
}

bool is_nchw(const View4& v) { return v.sw == 1 && v.sh == v.w; }
bool is_nhwc(const View4& v) { return v.sc == 1 && v.sw == v.c && v.sh == v.w * v.c; }
bool same_strides(const View4& a, const View4& b) { return a.sn == b.sn && a.sc == b.sc && a.sh == b.sh && a.sw == b.sw; }

std::string launched(const char* what) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(e);
}

template <typename T>
std::string forward_t(const GateMaskPoolArgs& a, float* z, float* weights, float* denom, cudaStream_t st) {
  const int64_t B = a.f.n, C = a.f.c, HW = a.f.h * a.f.w;
  weights_kernel<<<dim3(B), kThreads, 0, st>>>(a, weights, denom);
  if (is_nchw(a.f)) {
    constexpr int N = Vec16<T>::N;
    const bool vec = HW % N == 0 && (a.f.sn * static_cast<int64_t>(sizeof(T))) % 16 == 0 &&
                     (a.f.sc * static_cast<int64_t>(sizeof(T))) % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(a.features) % 16 == 0 && reinterpret_cast<uintptr_t>(weights) % 16 == 0;
    pool_nchw_kernel<T><<<dim3((C + kWarps - 1) / kWarps, B), kThreads, 0, st>>>(a, weights, denom, z, vec);
  } else if (is_nhwc(a.f)) {
    cudaMemsetAsync(z, 0, sizeof(float) * B * C, st);
    const int64_t cblocks = (C + kThreads - 1) / kThreads;
    // Enough blocks to fill the card (~4 waves of 132 SMs) without splitting pixels too finely.
    const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(HW / 16, 528 / std::max<int64_t>(1, B * cblocks)));
    pool_nhwc_kernel<T><<<dim3(cblocks, B, splits), kThreads, 0, st>>>(a, weights, denom, z);
  } else {
    pool_strided_kernel<T><<<dim3((B * C + kThreads - 1) / kThreads), kThreads, 0, st>>>(a, weights, denom, z);
  }
  return launched("gate_mask_pool_forward_cuda");
}

template <typename T>
std::string backward_t(const GateMaskPoolArgs& a, const float* gz, const float* z, T* dF, const View4& gf,
                       float* grad_gate, float* ws, cudaStream_t st) {
  const int64_t B = a.f.n, HW = a.f.h * a.f.w;
  float *denom = ws, *weights = ws + B;
  weights_kernel<<<dim3(B), kThreads, 0, st>>>(a, weights, denom);
  if (is_nhwc(a.f) && same_strides(a.f, gf)) {
    backward_nhwc_kernel<T><<<dim3((HW + kWarps - 1) / kWarps, B), kThreads, 0, st>>>(a, gf, gz, z, weights, denom, dF,
                                                                                       grad_gate);
  } else {
    backward_pixel_kernel<T><<<dim3((HW + kThreads - 1) / kThreads, B), kThreads, 0, st>>>(a, gf, gz, z, weights,
                                                                                           denom, dF, grad_gate);
  }
  return launched("gate_mask_pool_backward_cuda");
}

}  // namespace

bool cuda_compiled() { return true; }

std::string gate_mask_pool_forward_cuda(const GateMaskPoolArgs& a, float* z, float* weights, float* workspace,
                                        void* stream) {
  const std::string bad = validate(a);
  if (!bad.empty()) return bad;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case DType::Float32: return forward_t<float>(a, z, weights, workspace, st);
    case DType::Float16: return forward_t<__half>(a, z, weights, workspace, st);
    case DType::BFloat16: return forward_t<__nv_bfloat16>(a, z, weights, workspace, st);
    case DType::Float64: break;
  }
  return "float64 features are supported on the CPU only";
}

std::string gate_mask_pool_backward_cuda(const GateMaskPoolArgs& a, const float* grad_z, const float* z,
                                         void* grad_features, const View4& gf, float* grad_gate, float* workspace,
                                         void* stream) {
  const std::string bad = validate(a);
  if (!bad.empty()) return bad;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case DType::Float32:
      return backward_t<float>(a, grad_z, z, static_cast<float*>(grad_features), gf, grad_gate, workspace, st);
    case DType::Float16:
      return backward_t<__half>(a, grad_z, z, static_cast<__half*>(grad_features), gf, grad_gate, workspace, st);
    case DType::BFloat16:
      return backward_t<__nv_bfloat16>(a, grad_z, z, static_cast<__nv_bfloat16*>(grad_features), gf, grad_gate,
                                       workspace, st);
    case DType::Float64: break;
  }
  return "float64 features are supported on the CPU only";
}

}  // namespace saganet
