// Stand-in for the header a CUDA build of PyTorch generates (the CPU wheel lacks it), used only by
// the compile check of csrc/torch_ops_cuda.cpp against a CPU-only torch (see CMakeLists.txt).
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
