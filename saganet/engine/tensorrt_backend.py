"""TensorRT: an FP16 engine built from the bundle's model.onnx, dynamic batch 1..256.

NOT TESTED: TensorRT cannot be installed on this project's machines (CPU only; its GPU machines
lack it too). Where `tensorrt` is missing or there is no CUDA device, the backend reports itself
unavailable and "auto" moves on. The code follows the TensorRT 10 Python API.
"""
from __future__ import annotations

import numpy as np
import torch

OPT_BATCH, MAX_BATCH = 32, 256


def unavailable(bundle) -> str | None:
    if not bundle.has("onnx"):
        return "the bundle has no model.onnx to build a TensorRT engine from"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (it needs an NVIDIA GPU; this backend is untested)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


class Backend:
    max_batch = MAX_BATCH  # the optimisation profile's range
    preprocess = None

    def __init__(self, bundle, threads: int | None):
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(bundle.file("model.onnx"))):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {bundle.file('model.onnx')}: {errors}")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        t = bundle.tile_size
        for name, ch in (("image", 3), ("mask", 1)):
            profile.set_shape(name, (1, ch, t, t), (OPT_BATCH, ch, t, t), (MAX_BATCH, ch, t, t))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError("TensorRT could not build an engine from model.onnx")
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()

    def __call__(self, image: np.ndarray, mask: np.ndarray):
        with torch.cuda.stream(self.stream):
            inputs = {"image": torch.from_numpy(image).cuda(non_blocking=True),
                      "mask": torch.from_numpy(mask).cuda(non_blocking=True)}
            for name, x in inputs.items():
                self.context.set_input_shape(name, tuple(x.shape))
                self.context.set_tensor_address(name, x.data_ptr())
            outputs = {}
            for name in ("probs", "scores", "gate"):
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return tuple(outputs[n].cpu().numpy() for n in ("probs", "scores", "gate"))
