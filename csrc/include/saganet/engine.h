/* saganet engine C API: classify H&E tiles with a model bundle (saganet export), for scanners.
 * Link libsaganet_engine (find_package(saganet) target saganet::engine); it needs libtorch.
 *
 * As in saganet.h: no C++ exception crosses this boundary; failures return NULL or a status,
 * and saganet_last_error() gives the message on the calling thread.
 * saganet_engine_classify may be called from several threads at once on one engine.
 */
#ifndef SAGANET_ENGINE_H
#define SAGANET_ENGINE_H

#include <stdint.h>

#include "saganet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct saganet_engine saganet_engine; /* opaque */

/* Opens the bundle directory: checks its manifest, every file's sha256, and that its
 * AOTInductor package fits this CPU; threads: inference threads, 0 = libtorch's default.
 * NULL on failure. */
SAGANET_API saganet_engine* saganet_engine_create(const char* bundle_dir, int threads);
SAGANET_API void saganet_engine_destroy(saganet_engine* engine); /* NULL is fine */

SAGANET_API int saganet_engine_tile_size(const saganet_engine* engine);   /* tile edge T in pixels */
SAGANET_API double saganet_engine_mpp(const saganet_engine* engine);      /* microns per pixel of tiles */
SAGANET_API int saganet_engine_num_classes(const saganet_engine* engine); /* K */
SAGANET_API const char* saganet_engine_class_name(const saganet_engine* engine, int k); /* NULL if out of range */

/* tiles: n tiles of T*T*3 uint8 RGB, row-major, one after the other.
 * probs: n*K floats written (class probabilities); lengths: n*K floats written (class-vector
 * lengths; logits for a bundle with a linear head), or NULL; valid_fraction: n floats written (share of each tile in the valid-area
 * mask), or NULL. */
SAGANET_API saganet_status saganet_engine_classify(saganet_engine* engine, const uint8_t* tiles, int64_t n,
                                                   float* probs, float* lengths, float* valid_fraction);

#ifdef __cplusplus
}
#endif
#endif /* SAGANET_ENGINE_H */
