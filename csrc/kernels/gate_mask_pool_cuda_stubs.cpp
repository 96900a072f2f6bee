// What a build without CUDA links in place of gate_mask_pool_cuda.cu: the CUDA entry points answer
// with the reason instead of running (CMakeLists.txt picks one of the two files).
#include "kernels/gate_mask_pool.h"

namespace saganet {

bool cuda_compiled() { return false; }
std::string gate_mask_pool_forward_cuda(const GateMaskPoolArgs&, float*, float*, float*, void*) {
  return "saganet was built without CUDA";
}
std::string gate_mask_pool_backward_cuda(const GateMaskPoolArgs&, const float*, const float*, void*, const View4&, float*,
                                         float*, void*) {
  return "saganet was built without CUDA";
}

}  // namespace saganet
