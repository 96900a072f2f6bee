// Fused gate-mask pooling kernels: plain pointers, shapes and strides; no libtorch.
//
//   w[b,h,x] = sigmoid(G[b,h,x]) * M[b,h,x]
//   z[b,c]   = sum_hw(F[b,c,h,x] * w[b,h,x]) / (sum_hw(w[b,h,x]) + eps)
//
// Backward (M takes no gradient), with D[b] = sum_hw(w) + eps:
//   dF[b,c,h,x] = dz[b,c] * w[b,h,x] / D[b]
//   dG[b,h,x]   = sum_c dz[b,c] * (F[b,c,h,x] - z[b,c]) / D[b] * M * s * (1 - s),  s = sigmoid(G)
//
// F is read once per pass. Any strides are accepted; contiguous NCHW and channels-last (NHWC)
// have vectorised fast paths, everything else a correct strided loop (no hidden copy).
#pragma once

#include <cstdint>
#include <string>

namespace saganet {

enum class DType : int { Float32 = 0, BFloat16 = 1, Float16 = 2, Float64 = 3 };  // element type of F and dF

// A (N, C, H, W) view; strides in elements, in that dimension order whatever the memory layout.
struct View4 {
  int64_t n = 0, c = 0, h = 0, w = 0;
  int64_t sn = 0, sc = 0, sh = 0, sw = 0;
};

struct GateMaskPoolArgs {
  const void* features = nullptr;  // F (B,C,H,W), element type `dtype`
  DType dtype = DType::Float32;
  View4 f;
  const void* gate_logits = nullptr;  // G (B,1,H,W), accumulator type (see below); strides for (b, h, w)
  int64_t g_sn = 0, g_sh = 0, g_sw = 0;
  const void* mask = nullptr;  // M (B,1,H,W): accumulator type in [0,1], or uint8 (bool) when mask_is_bool
  bool mask_is_bool = false;
  int64_t m_sn = 0, m_sh = 0, m_sw = 0;
  float eps = 1e-6f;
};

// Empty when the arguments are usable, else what is wrong (null pointer, non-positive size, ...).
std::string validate(const GateMaskPoolArgs& a);

// z: (B,C) contiguous. weights: (B,H,W) contiguous (sigmoid(G)*M), always written.
void gate_mask_pool_forward_cpu(const GateMaskPoolArgs& a, void* z, void* weights);

// grad_z and z: (B,C) contiguous. grad_features: element type a.dtype with layout `gf` (same sizes
// as F). grad_gate: (B,H,W) contiguous.
void gate_mask_pool_backward_cpu(const GateMaskPoolArgs& a, const void* grad_z, const void* z, void* grad_features,
                                 const View4& gf, void* grad_gate);

// Accumulator type: float64 when dtype is Float64, else float32. G, M (unless bool), z, weights,
// grad_z and grad_gate are of the accumulator type; F and dF of `dtype`.
// CPU: Float32, BFloat16 and Float64 (for gradcheck) features. CUDA: Float32, Float16 and BFloat16.
//
// CUDA versions: all pointers on the device, launched on `stream` (a cudaStream_t; null = the
// default stream), asynchronous. `workspace` holds B floats (forward) or B + B*H*W floats
// (backward). Return an empty string, or what is wrong with the arguments or the launch.
std::string gate_mask_pool_forward_cuda(const GateMaskPoolArgs& a, float* z, float* weights, float* workspace,
                                        void* stream);
std::string gate_mask_pool_backward_cuda(const GateMaskPoolArgs& a, const float* grad_z, const float* z,
                                         void* grad_features, const View4& gf, float* grad_gate, float* workspace,
                                         void* stream);
bool cuda_compiled();  // whether this build contains the CUDA kernels

}  // namespace saganet
