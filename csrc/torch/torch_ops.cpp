// PyTorch integration: the saganet::gate_mask_pool op (schema, CPU and Meta kernels). The CUDA
// kernels register in torch_ops_cuda.cpp; autograd and the Python wrapper live in saganet/ops.py.
#include "torch/torch_ops.h"

#include <torch/library.h>

#include <atomic>

namespace saganet {
namespace {
// Calls of the CPU forward kernel: lets the engine's tests prove that a compiled model runs the
// fused op (and not a decomposition of it). Deliberately kept in production: one relaxed atomic
// increment per op call (not per element), a few nanoseconds against the kernel's microseconds.
std::atomic<uint64_t> cpu_forward_calls{0};
}  // namespace

View4 view_of(const at::Tensor& t) {
  return View4{t.size(0), t.size(1), t.size(2), t.size(3), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

at::ScalarType acc_type(const at::Tensor& f) { return f.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor gate_for_kernel(const at::Tensor& g, at::ScalarType acc, const char* op) {
  TORCH_CHECK(at::isFloatingType(g.scalar_type()), op, ": gate_logits must be floating point, got ", g.scalar_type());
  return g.scalar_type() == acc ? g : g.to(acc);
}

at::Tensor mask_for_kernel(const at::Tensor& m, at::ScalarType acc, const char* op) {
  // Integer masks are refused: 0/255 images would silently weigh pixels 255 times.
  TORCH_CHECK(at::isFloatingType(m.scalar_type()) || m.scalar_type() == at::kBool, op,
              ": mask must be floating point (in [0, 1]) or bool, got ", m.scalar_type());
  return (m.scalar_type() == acc || m.scalar_type() == at::kBool) ? m : m.to(acc);
}

GateMaskPoolArgs make_args(const at::Tensor& F, const at::Tensor& G, const at::Tensor& M, double eps, const char* op) {
  TORCH_CHECK(F.dim() == 4, op, ": features must be 4-D (B,C,H,W), got ", F.dim(), "-D with shape ", F.sizes());
  const auto B = F.size(0), H = F.size(2), W = F.size(3);
  TORCH_CHECK(F.numel() > 0, op, ": features must not be empty, got shape ", F.sizes());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"gate_logits", G}, {"mask", M}}) {
    TORCH_CHECK(t.dim() == 4 && t.size(0) == B && t.size(1) == 1 && t.size(2) == H && t.size(3) == W, op, ": ", name,
                " must have shape (", B, ", 1, ", H, ", ", W, ") to match features ", F.sizes(), ", got ", t.sizes());
    TORCH_CHECK(t.device() == F.device(), op, ": ", name, " is on ", t.device(), ", features on ", F.device());
  }
  TORCH_CHECK(eps > 0 && std::isfinite(eps), op, ": eps must be positive and finite, got ", eps);
  GateMaskPoolArgs a;
  a.features = F.data_ptr();
  switch (F.scalar_type()) {
    case at::kFloat: a.dtype = DType::Float32; break;
    case at::kBFloat16: a.dtype = DType::BFloat16; break;
    case at::kHalf: a.dtype = DType::Float16; break;
    case at::kDouble: a.dtype = DType::Float64; break;
    default: TORCH_CHECK(false, op, ": features must be float32, bfloat16, float16 or float64, got ", F.scalar_type());
  }
  a.f = view_of(F);
  TORCH_CHECK(G.scalar_type() == acc_type(F), op, ": internal: gate_logits not converted");
  a.gate_logits = G.data_ptr();
  a.g_sn = G.stride(0), a.g_sh = G.stride(2), a.g_sw = G.stride(3);
  a.mask = M.data_ptr();
  a.mask_is_bool = M.scalar_type() == at::kBool;
  a.m_sn = M.stride(0), a.m_sh = M.stride(2), a.m_sw = M.stride(3);
  a.eps = static_cast<float>(eps);
  const std::string bad = validate(a);
  TORCH_CHECK(bad.empty(), op, ": ", bad);
  return a;
}

Inputs prepare(const at::Tensor& features, const at::Tensor& gate_logits, const at::Tensor& mask, double eps,
               at::ScalarType acc, const char* op) {
  Inputs in{gate_for_kernel(gate_logits, acc, op), mask_for_kernel(mask, acc, op), {}};
  in.args = make_args(features, in.gate, in.mask, eps, op);
  return in;
}

std::pair<at::Tensor, at::Tensor> backward_inputs(const at::Tensor& grad_z, const at::Tensor& z,
                                                  const GateMaskPoolArgs& a, at::ScalarType acc, const char* op) {
  TORCH_CHECK(grad_z.dim() == 2 && grad_z.size(0) == a.f.n && grad_z.size(1) == a.f.c && z.sizes() == grad_z.sizes(), op,
              ": grad_z and z must be (B, C) = (", a.f.n, ", ", a.f.c, "), got ", grad_z.sizes(), " and ", z.sizes());
  return {grad_z.to(acc).contiguous(), z.to(acc).contiguous()};
}

namespace {

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& features, const at::Tensor& gate_logits,
                                               const at::Tensor& mask, double eps) {
  const char* op = "saganet::gate_mask_pool";
  TORCH_CHECK(features.device().is_cpu(), op, ": CPU kernel called with features on ", features.device());
  TORCH_CHECK(features.scalar_type() != at::kHalf, op, ": float16 features are supported on CUDA only; use float32 or bfloat16 on the CPU");
  const auto acc = acc_type(features);
  const Inputs in = prepare(features, gate_logits, mask, eps, acc, op);
  const GateMaskPoolArgs& a = in.args;
  auto z = at::empty({a.f.n, a.f.c}, features.options().dtype(acc));
  auto w = at::empty({a.f.n, 1, a.f.h, a.f.w}, features.options().dtype(acc));
  gate_mask_pool_forward_cpu(a, z.data_ptr(), w.data_ptr());
  cpu_forward_calls.fetch_add(1, std::memory_order_relaxed);
  return {features.scalar_type() == acc ? z : z.to(features.scalar_type()), w};
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_z, const at::Tensor& features,
                                                const at::Tensor& gate_logits, const at::Tensor& mask,
                                                const at::Tensor& z, double eps) {
  const char* op = "saganet::gate_mask_pool_backward";
  TORCH_CHECK(features.device().is_cpu(), op, ": CPU kernel called with features on ", features.device());
  TORCH_CHECK(features.scalar_type() != at::kHalf, op, ": float16 features are supported on CUDA only");
  const auto acc = acc_type(features);
  const Inputs in = prepare(features, gate_logits, mask, eps, acc, op);
  const GateMaskPoolArgs& a = in.args;
  const auto [gz, zf] = backward_inputs(grad_z, z, a, acc, op);
  // empty_like keeps a dense input's strides (channels-last stays channels-last): no hidden copy.
  auto dF = at::empty_like(features);
  auto dG = at::empty({a.f.n, 1, a.f.h, a.f.w}, features.options().dtype(acc));
  gate_mask_pool_backward_cpu(a, gz.data_ptr(), zf.data_ptr(), dF.data_ptr(), view_of(dF), dG.data_ptr());
  return {dF, dG.to(gate_logits.scalar_type())};
}

// Shapes only: what torch.compile, torch.export and AOTInductor trace with.
std::tuple<at::Tensor, at::Tensor> forward_meta(const at::Tensor& features, const at::Tensor& gate_logits,
                                                const at::Tensor& mask, double eps) {
  TORCH_CHECK(features.dim() == 4, "saganet::gate_mask_pool: features must be 4-D (B,C,H,W), got ", features.dim(), "-D");
  const auto B = features.sym_size(0), C = features.sym_size(1), H = features.sym_size(2), W = features.sym_size(3);
  auto z = at::empty_symint({B, C}, features.options());
  auto w = at::empty_symint({B, 1, H, W}, features.options().dtype(acc_type(features)));
  return {z, w};
}

std::tuple<at::Tensor, at::Tensor> backward_meta(const at::Tensor& grad_z, const at::Tensor& features,
                                                 const at::Tensor& gate_logits, const at::Tensor& mask,
                                                 const at::Tensor& z, double eps) {
  return {at::empty_like(features), at::empty_like(gate_logits)};
}

}  // namespace
}  // namespace saganet

extern "C" __attribute__((visibility("default"))) uint64_t saganet_torch_cpu_forward_calls(void) {
  return saganet::cpu_forward_calls.load(std::memory_order_relaxed);
}

TORCH_LIBRARY(saganet, m) {
  m.def("gate_mask_pool(Tensor features, Tensor gate_logits, Tensor mask, float eps=1e-06) -> (Tensor, Tensor)");
  m.def("gate_mask_pool_backward(Tensor grad_z, Tensor features, Tensor gate_logits, Tensor mask, Tensor z, "
        "float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(saganet, CPU, m) {
  m.impl("gate_mask_pool", &saganet::forward_cpu);
  m.impl("gate_mask_pool_backward", &saganet::backward_cpu);
}

TORCH_LIBRARY_IMPL(saganet, Meta, m) {
  m.impl("gate_mask_pool", &saganet::forward_meta);
  m.impl("gate_mask_pool_backward", &saganet::backward_meta);
}
