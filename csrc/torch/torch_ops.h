// Shared by the CPU and CUDA adapters: argument checks and the tensor -> kernel-view conversion.
#pragma once

#include <ATen/ATen.h>

#include "kernels/gate_mask_pool.h"

namespace saganet {

// Checks rank, shapes, dtypes and devices (clear messages through TORCH_CHECK) and returns the
// kernel arguments. `gate` and `mask` are the tensors the kernel reads (gate in the accumulator
// type, mask in it or bool): they may be converted copies (B*H*W, small), which the caller keeps alive.
GateMaskPoolArgs make_args(const at::Tensor& features, const at::Tensor& gate, const at::Tensor& mask, double eps,
                           const char* op);
at::ScalarType acc_type(const at::Tensor& features);  // float64 for float64 features, else float32
at::Tensor gate_for_kernel(const at::Tensor& gate_logits, at::ScalarType acc, const char* op);
at::Tensor mask_for_kernel(const at::Tensor& mask, at::ScalarType acc, const char* op);
View4 view_of(const at::Tensor& t);

// What one kernel call reads, checked: the converted gate and mask (kept alive here) and the view.
struct Inputs {
  at::Tensor gate, mask;
  GateMaskPoolArgs args;
};
Inputs prepare(const at::Tensor& features, const at::Tensor& gate_logits, const at::Tensor& mask, double eps,
               at::ScalarType acc, const char* op);
// grad_z and z for a backward kernel: checked to be (B, C), converted to `acc`, contiguous.
std::pair<at::Tensor, at::Tensor> backward_inputs(const at::Tensor& grad_z, const at::Tensor& z,
                                                  const GateMaskPoolArgs& a, at::ScalarType acc, const char* op);

}  // namespace saganet
