// saganet._C: pybind11 bindings of the C++ library (no libtorch here; the torch op lives in
// libsaganet_torch, loaded by saganet/ops.py). numpy in, numpy out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "gate_mask_pool.h"
#include "saganet/saganet.hpp"

namespace py = pybind11;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// features (B,C,H,W) or (B,H,W,C) with channels_last; gate_logits and mask (B,H,W) -> (z (B,C), weights (B,H,W))
py::tuple gate_mask_pool_numpy(FloatArray features, FloatArray gate_logits, FloatArray mask, bool channels_last,
                               float eps) {
  if (features.ndim() != 4) throw py::value_error("features must be 4-D, got " + std::to_string(features.ndim()) + "-D");
  const auto B = features.shape(0);
  const auto C = channels_last ? features.shape(3) : features.shape(1);
  const auto H = channels_last ? features.shape(1) : features.shape(2);
  const auto W = channels_last ? features.shape(2) : features.shape(3);
  for (const auto* t : {&gate_logits, &mask})
    if (t->ndim() != 3 || t->shape(0) != B || t->shape(1) != H || t->shape(2) != W)
      throw py::value_error("gate_logits and mask must have shape (" + std::to_string(B) + ", " + std::to_string(H) +
                            ", " + std::to_string(W) + ")");
  FloatArray z({B, C}), w({B, H, W});
  saganet_status s;
  {
    py::gil_scoped_release nogil;
    s = saganet_gate_mask_pool(features.data(), channels_last ? SAGANET_NHWC : SAGANET_NCHW, gate_logits.data(),
                               mask.data(), B, C, H, W, eps, z.mutable_data(), w.mutable_data());
  }
  if (s != SAGANET_OK) throw py::value_error(saganet_last_error());
  return py::make_tuple(z, w);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "saganet native library (kernels and C++ API)";
  m.def("version", &saganet::version);
  m.def("build_info", &saganet::build_info);
  m.def("cuda_compiled", &saganet::cuda_compiled, "whether the CUDA kernels are part of this build");
  m.def("gate_mask_pool", &gate_mask_pool_numpy, py::arg("features"), py::arg("gate_logits"), py::arg("mask"),
        py::arg("channels_last") = false, py::arg("eps") = 1e-6f,
        "CPU gate-mask pooling on numpy float32 arrays through the C API; returns (z, weights)");
}
