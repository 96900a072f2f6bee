// CUDA implementations of the saganet::gate_mask_pool ops: built only against a CUDA build of
// PyTorch (the kernels themselves, gate_mask_pool_cuda.cu, build whenever nvcc is present).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "torch/torch_ops.h"

namespace saganet {
namespace {

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& features, const at::Tensor& gate_logits,
                                                const at::Tensor& mask, double eps) {
  const char* op = "saganet::gate_mask_pool";
  const c10::cuda::CUDAGuard guard(features.device());
  TORCH_CHECK(features.scalar_type() != at::kDouble, op, ": float64 features are supported on the CPU only");
  const Inputs in = prepare(features, gate_logits, mask, eps, at::kFloat, op);
  const GateMaskPoolArgs& a = in.args;
  auto opts = features.options().dtype(at::kFloat);
  auto z = at::empty({a.f.n, a.f.c}, opts);
  auto w = at::empty({a.f.n, 1, a.f.h, a.f.w}, opts);
  auto ws = at::empty({a.f.n}, opts);
  const std::string err = gate_mask_pool_forward_cuda(a, z.data_ptr<float>(), w.data_ptr<float>(), ws.data_ptr<float>(),
                                                      c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err.empty(), op, ": ", err);
  return {features.scalar_type() == at::kFloat ? z : z.to(features.scalar_type()), w};
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_z, const at::Tensor& features,
                                                 const at::Tensor& gate_logits, const at::Tensor& mask,
                                                 const at::Tensor& z, double eps) {
  const char* op = "saganet::gate_mask_pool_backward";
  const c10::cuda::CUDAGuard guard(features.device());
  TORCH_CHECK(features.scalar_type() != at::kDouble, op, ": float64 features are supported on the CPU only");
  const Inputs in = prepare(features, gate_logits, mask, eps, at::kFloat, op);
  const GateMaskPoolArgs& a = in.args;
  const auto [gz, zf] = backward_inputs(grad_z, z, a, at::kFloat, op);
  auto dF = at::empty_like(features);
  auto opts = features.options().dtype(at::kFloat);
  auto dG = at::empty({a.f.n, 1, a.f.h, a.f.w}, opts);
  auto ws = at::empty({a.f.n + a.f.n * a.f.h * a.f.w}, opts);
  const std::string err = gate_mask_pool_backward_cuda(a, gz.data_ptr<float>(), zf.data_ptr<float>(), dF.data_ptr(),
                                                       view_of(dF), dG.data_ptr<float>(), ws.data_ptr<float>(),
                                                       c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err.empty(), op, ": ", err);
  return {dF, dG.to(gate_logits.scalar_type())};
}

}  // namespace
}  // namespace saganet

TORCH_LIBRARY_IMPL(saganet, CUDA, m) {
  m.impl("gate_mask_pool", &saganet::forward_cuda);
  m.impl("gate_mask_pool_backward", &saganet::backward_cuda);
}
