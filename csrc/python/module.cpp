// saganet._C: pybind11 bindings of the C++ library: kernels, C++ preprocessing and, when the
// build has libtorch (SAGANET_WITH_ENGINE), the native engine. numpy in, numpy out. The torch op
// itself lives in libsaganet_torch, loaded by saganet/ops.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "kernels/gate_mask_pool.h"
#include "engine/preprocess.h"
#include "saganet/saganet.hpp"
#ifdef SAGANET_WITH_ENGINE
#include "engine/native_engine.h"
#endif

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

using ByteArray = py::array_t<uint8_t, py::array::c_style>;

void check_rgb(const ByteArray& rgb, int ndim, const char* what) {
  if (rgb.ndim() != ndim || rgb.shape(ndim - 1) != 3)
    throw py::value_error(std::string(what) + ": expected uint8 RGB of " + std::to_string(ndim) + " dimensions ending in 3");
}

saganet::MaskConfig mask_config(const py::dict& d) {
  saganet::MaskConfig c;
  for (auto item : d) {
    const auto key = item.first.cast<std::string>();
    if (key == "tissue_od") c.tissue_od = item.second.cast<float>();
    else if (key == "focus_window") c.focus_window = item.second.cast<int>();
    else if (key == "focus_min") c.focus_min = item.second.cast<float>();
    else if (key == "focus_relative") c.focus_relative = item.second.cast<float>();
    else if (key == "focus_floor") c.focus_floor = item.second.cast<float>();
    else if (key == "nuclei_threshold") {
      if (!py::isinstance<py::float_>(item.second) && !py::isinstance<py::int_>(item.second))
        throw py::value_error("nuclei_threshold must be a number in the C++ preprocessing ('otsu' is Python-only)");
      c.nuclei_threshold = item.second.cast<double>();
    } else if (key == "cell_window") c.cell_window = item.second.cast<int>();
    else if (key == "cell_density_min") c.cell_density_min = item.second.cast<float>();
    else if (key == "min_region") c.min_region = item.second.cast<int>();
    else throw py::value_error("unknown mask setting '" + key + "'");
  }
  return c;
}

py::array_t<bool> valid_area_mask_numpy(ByteArray rgb, const py::dict& config) {
  check_rgb(rgb, 3, "valid_area_mask");
  const int h = int(rgb.shape(0)), w = int(rgb.shape(1));
  const saganet::MaskConfig c = mask_config(config);
  py::array_t<bool> out({h, w});
  {
    py::gil_scoped_release nogil;
    try {
      saganet::valid_area_mask(rgb.data(), h, w, c, reinterpret_cast<uint8_t*>(out.mutable_data()));
    } catch (const std::invalid_argument& e) {
      py::gil_scoped_acquire gil;
      throw py::value_error(e.what());
    }
  }
  return out;
}

#ifdef SAGANET_WITH_ENGINE
using FloatIn = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::tuple outputs(const saganet::EngineOutput& o) {
  py::array_t<float> probs({o.n, o.classes}), scores({o.n, o.classes}), gate({o.n, int64_t(1), o.gate_h, o.gate_w});
  std::copy(o.probs.begin(), o.probs.end(), probs.mutable_data());
  std::copy(o.scores.begin(), o.scores.end(), scores.mutable_data());
  std::copy(o.gate.begin(), o.gate.end(), gate.mutable_data());
  return py::make_tuple(probs, scores, gate);
}

int64_t check_tiles(const saganet::Engine& e, const ByteArray& tiles) {
  const int t = e.tile_size();
  if (tiles.ndim() != 4 || tiles.shape(1) != t || tiles.shape(2) != t || tiles.shape(3) != 3 || tiles.shape(0) < 1)
    throw py::value_error("tiles must be uint8 of shape (N, " + std::to_string(t) + ", " + std::to_string(t) + ", 3)");
  return tiles.shape(0);
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "saganet native library (kernels and C++ API)";
  m.def("version", &saganet::version);
  m.def("build_info", &saganet::build_info);
  m.def("cuda_compiled", &saganet::cuda_compiled, "whether the CUDA kernels are part of this build");
  m.def("gate_mask_pool", &gate_mask_pool_numpy, py::arg("features"), py::arg("gate_logits"), py::arg("mask"),
        py::arg("channels_last") = false, py::arg("eps") = 1e-6f,
        "CPU gate-mask pooling on numpy float32 arrays through the C API; returns (z, weights)");
  m.def("valid_area_mask", &valid_area_mask_numpy, py::arg("rgb"), py::arg("config") = py::dict(),
        "the valid-area mask computed by the C++ preprocessing (the engine's), for comparison with saganet.tissue");
  m.def("normalise", [](ByteArray rgb, std::array<float, 3> mean, std::array<float, 3> std) {
    check_rgb(rgb, 3, "normalise");
    const int h = int(rgb.shape(0)), w = int(rgb.shape(1));
    py::array_t<float> out({3, h, w});
    saganet::normalise(rgb.data(), h, w, mean.data(), std.data(), out.mutable_data());
    return out;
  }, py::arg("rgb"), py::arg("mean"), py::arg("std"), "(v / 255 - mean) / std as 3 planes, by the C++ preprocessing");
#ifdef SAGANET_WITH_ENGINE
  py::class_<saganet::Engine>(m, "Engine", "the native C++ engine over a bundle's AOTInductor package")
      .def(py::init([](const std::string& dir, int threads) {
             try {
               return std::make_unique<saganet::Engine>(dir, threads);
             } catch (const saganet::Error& e) {
               throw py::value_error(e.what());
             }
           }), py::arg("bundle"), py::arg("threads") = 0)
      .def_property_readonly("tile_size", &saganet::Engine::tile_size)
      .def_property_readonly("mpp", &saganet::Engine::mpp)
      .def_property_readonly("class_names", &saganet::Engine::class_names)
      .def_property_readonly("model_id", &saganet::Engine::model_id)
      .def("preprocess", [](const saganet::Engine& e, ByteArray tiles) {
        const int64_t n = check_tiles(e, tiles), t = e.tile_size();
        py::array_t<float> image({n, int64_t(3), t, t}), mask({n, int64_t(1), t, t});
        {
          py::gil_scoped_release nogil;
          e.preprocess(tiles.data(), n, image.mutable_data(), mask.mutable_data());
        }
        return py::make_tuple(image, mask);
      }, py::arg("tiles"), "uint8 (N,T,T,3) -> (image (N,3,T,T), mask (N,1,T,T)) float32")
      .def("run", [](const saganet::Engine& e, FloatIn image, FloatIn mask) {
        const int64_t t = e.tile_size();
        if (image.ndim() != 4 || image.shape(1) != 3 || image.shape(2) != t || image.shape(3) != t || image.shape(0) < 1)
          throw py::value_error("image must be float32 (N, 3, " + std::to_string(t) + ", " + std::to_string(t) + ")");
        const int64_t n = image.shape(0);
        if (mask.ndim() != 4 || mask.shape(0) != n || mask.shape(1) != 1 || mask.shape(2) != t || mask.shape(3) != t)
          throw py::value_error("mask must be float32 (N, 1, T, T) with the image's N and T");
        saganet::EngineOutput o;
        {
          py::gil_scoped_release nogil;
          o = e.run(image.data(), mask.data(), n);
        }
        return outputs(o);
      }, py::arg("image"), py::arg("mask"), "the network on preprocessed arrays -> (probs, scores, gate)")
      .def("classify", [](const saganet::Engine& e, ByteArray tiles) {
        const int64_t n = check_tiles(e, tiles);
        saganet::EngineOutput o;
        {
          py::gil_scoped_release nogil;
          o = e.classify(tiles.data(), n);
        }
        py::array_t<float> valid(n);
        std::copy(o.valid_fraction.begin(), o.valid_fraction.end(), valid.mutable_data());
        return py::make_tuple(outputs(o), valid);
      }, py::arg("tiles"), "preprocess + run in C++ -> ((probs, scores, gate), valid_fraction)");
  m.def("fused_op_calls", &saganet::fused_op_calls, "calls of the fused gate_mask_pool CPU kernel in this process");
#endif
}
