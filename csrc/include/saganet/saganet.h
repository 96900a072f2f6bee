/* saganet C API: for scanners and any language with a C FFI.
 *
 * No C++ exception crosses this boundary: every function returns a status code, and
 * saganet_last_error() gives the message of the last failure on the calling thread.
 */
#ifndef SAGANET_H
#define SAGANET_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define SAGANET_API __declspec(dllexport)
#else
#define SAGANET_API __attribute__((visibility("default")))
#endif

typedef enum saganet_status {
  SAGANET_OK = 0,
  SAGANET_INVALID_ARGUMENT = 1, /* null pointer, bad shape or value */
  SAGANET_UNSUPPORTED = 2,      /* e.g. a CUDA call in a build without CUDA */
  SAGANET_RUNTIME_ERROR = 3,    /* anything else; see saganet_last_error() */
} saganet_status;

typedef enum saganet_layout {
  SAGANET_NCHW = 0, /* features[b][c][h][w], contiguous */
  SAGANET_NHWC = 1, /* features[b][h][w][c], contiguous (channels-last) */
} saganet_layout;

/* "0.1.0" */
SAGANET_API const char* saganet_version(void);
/* One line: version, compiler, OpenMP, CUDA kernels compiled or not, CUDA architectures. */
SAGANET_API const char* saganet_build_info(void);
/* Message of the last failed call on this thread ("" if none). Valid until the next call. */
SAGANET_API const char* saganet_last_error(void);

/* z[b][c] = sum_hw(F * sigmoid(G) * M) / (sum_hw(sigmoid(G) * M) + eps), on the CPU.
 * features: B*C*H*W floats in `layout`; gate_logits, mask: B*H*W floats (mask in [0,1]);
 * z: B*C floats written; weights: B*H*W floats written (sigmoid(G)*M), or NULL. */
SAGANET_API saganet_status saganet_gate_mask_pool(const float* features, saganet_layout layout,
                                                  const float* gate_logits, const float* mask, int64_t batch,
                                                  int64_t channels, int64_t height, int64_t width, float eps, float* z,
                                                  float* weights);

#ifdef __cplusplus
}
#endif
#endif /* SAGANET_H */
