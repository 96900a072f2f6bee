// Shared by the CPU and CUDA adapters: argument checks and the tensor -> kernel-view conversion.
#pragma once

#include <ATen/ATen.h>

#include "gate_mask_pool.h"

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

}  // namespace saganet
