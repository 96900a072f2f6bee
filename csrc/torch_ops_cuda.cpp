// CUDA implementations of the saganet::gate_mask_pool ops: built only against a CUDA build of
// PyTorch (the kernels themselves, gate_mask_pool_cuda.cu, build whenever nvcc is present).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "torch_ops.h"

namespace saganet {
namespace {

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& features, const at::Tensor& gate_logits,
                                                const at::Tensor& mask, double eps) {
  const char* op = "saganet::gate_mask_pool";
  const c10::cuda::CUDAGuard guard(features.device());
  TORCH_CHECK(features.scalar_type() != at::kDouble, op, ": float64 features are supported on the CPU only");
  const at::Tensor g = gate_for_kernel(gate_logits, at::kFloat, op), m = mask_for_kernel(mask, at::kFloat, op);
  const GateMaskPoolArgs a = make_args(features, g, m, eps, op);
  auto opts = features.options().dtype(at::kFloat);
  auto z = at::empty({a.f.n, a.f.c}, opts);
  auto w = at::empty({a.f.n, 1, a.f.h, a.f.w}, opts);
  auto ws = at::empty({a.f.n}, opts);
  const std::string err = gate_mask_pool_forward_cuda(a, z.data_ptr<float>(), w.data_ptr<float>(), ws.data_ptr<float>(),
                                                      at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err.empty(), op, ": ", err);
  return {features.scalar_type() == at::kFloat ? z : z.to(features.scalar_type()), w};
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_z, const at::Tensor& features,
                                                 const at::Tensor& gate_logits, const at::Tensor& mask,
                                                 const at::Tensor& z, double eps) {
  const char* op = "saganet::gate_mask_pool_backward";
  const c10::cuda::CUDAGuard guard(features.device());
  TORCH_CHECK(features.scalar_type() != at::kDouble, op, ": float64 features are supported on the CPU only");
  const at::Tensor g = gate_for_kernel(gate_logits, at::kFloat, op), m = mask_for_kernel(mask, at::kFloat, op);
  const GateMaskPoolArgs a = make_args(features, g, m, eps, op);
  TORCH_CHECK(grad_z.dim() == 2 && grad_z.size(0) == a.f.n && grad_z.size(1) == a.f.c && z.sizes() == grad_z.sizes(), op,
              ": grad_z and z must be (B, C) = (", a.f.n, ", ", a.f.c, "), got ", grad_z.sizes(), " and ", z.sizes());
  const at::Tensor gz = grad_z.to(at::kFloat).contiguous(), zf = z.to(at::kFloat).contiguous();
  auto dF = at::empty_like(features);
  auto opts = features.options().dtype(at::kFloat);
  auto dG = at::empty({a.f.n, 1, a.f.h, a.f.w}, opts);
  auto ws = at::empty({a.f.n + a.f.n * a.f.h * a.f.w}, opts);
  const std::string err = gate_mask_pool_backward_cuda(a, gz.data_ptr<float>(), zf.data_ptr<float>(), dF.data_ptr(),
                                                       view_of(dF), dG.data_ptr<float>(), ws.data_ptr<float>(),
                                                       at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err.empty(), op, ": ", err);
  return {dF, dG.to(gate_logits.scalar_type())};
}

}  // namespace
}  // namespace saganet

TORCH_LIBRARY_IMPL(saganet, CUDA, m) {
  m.impl("gate_mask_pool", &saganet::forward_cuda);
  m.impl("gate_mask_pool_backward", &saganet::backward_cuda);
}
