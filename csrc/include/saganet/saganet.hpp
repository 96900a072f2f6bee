// saganet C++ API: the same operations as saganet.h, with exceptions (saganet::Error) and views.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "saganet.h"

namespace saganet {

class SAGANET_API Error : public std::runtime_error {
 public:
  Error(saganet_status status, const std::string& msg) : std::runtime_error(msg), status_(status) {}
  saganet_status status() const { return status_; }

 private:
  saganet_status status_;
};

SAGANET_API std::string version();
SAGANET_API std::string build_info();

// Gate-mask pooling on the CPU over contiguous buffers; returns z (batch * channels). Sizes are
// checked against the vectors (a short buffer throws instead of reading out of bounds).
SAGANET_API std::vector<float> gate_mask_pool(const std::vector<float>& features, saganet_layout layout,
                                  const std::vector<float>& gate_logits, const std::vector<float>& mask, int64_t batch,
                                  int64_t channels, int64_t height, int64_t width, float eps = 1e-6f,
                                  std::vector<float>* weights = nullptr);

}  // namespace saganet
