// The engine's C API over saganet::Engine: everything is caught here; the message goes to
// saganet_last_error() (kept by libsaganet, per thread).
#include <cstring>
#include <exception>
#include <new>

#include "engine/native_engine.h"
#include "saganet/engine.h"
#include "saganet/saganet.hpp"

extern "C" void saganet_internal_set_last_error(const char* message);

struct saganet_engine {
  saganet::Engine engine;
  explicit saganet_engine(const char* dir, int threads) : engine(dir, threads) {}
};

namespace {
saganet_status fail(saganet_status s, const char* msg) {
  saganet_internal_set_last_error(msg);
  return s;
}
}  // namespace

extern "C" {

saganet_engine* saganet_engine_create(const char* bundle_dir, int threads) {
  saganet_internal_set_last_error("");
  if (!bundle_dir) {
    fail(SAGANET_INVALID_ARGUMENT, "saganet_engine_create: bundle_dir must not be NULL");
    return nullptr;
  }
  try {
    return new saganet_engine(bundle_dir, threads);
  } catch (const std::exception& e) {
    fail(SAGANET_RUNTIME_ERROR, e.what());
  } catch (...) {
    fail(SAGANET_RUNTIME_ERROR, "saganet_engine_create: unknown error");
  }
  return nullptr;
}

void saganet_engine_destroy(saganet_engine* engine) { delete engine; }

int saganet_engine_tile_size(const saganet_engine* e) { return e ? e->engine.tile_size() : 0; }
double saganet_engine_mpp(const saganet_engine* e) { return e ? e->engine.mpp() : 0.0; }
int saganet_engine_num_classes(const saganet_engine* e) { return e ? int(e->engine.class_names().size()) : 0; }

const char* saganet_engine_class_name(const saganet_engine* e, int k) {
  if (!e || k < 0 || k >= int(e->engine.class_names().size())) return nullptr;
  return e->engine.class_names()[size_t(k)].c_str();
}

saganet_status saganet_engine_classify(saganet_engine* e, const uint8_t* tiles, int64_t n, float* probs, float* lengths,
                                       float* valid_fraction) {
  saganet_internal_set_last_error("");
  if (!e || !tiles || !probs) return fail(SAGANET_INVALID_ARGUMENT, "saganet_engine_classify: engine, tiles and probs must not be NULL");
  if (n < 1) return fail(SAGANET_INVALID_ARGUMENT, "saganet_engine_classify: n must be at least 1");
  try {
    const saganet::EngineOutput out = e->engine.classify(tiles, n);
    std::memcpy(probs, out.probs.data(), out.probs.size() * sizeof(float));
    if (lengths) std::memcpy(lengths, out.scores.data(), out.scores.size() * sizeof(float));
    if (valid_fraction) std::memcpy(valid_fraction, out.valid_fraction.data(), out.valid_fraction.size() * sizeof(float));
    return SAGANET_OK;
  } catch (const saganet::Error& err) {
    return fail(err.status(), err.what());
  } catch (const std::bad_alloc&) {
    return fail(SAGANET_RUNTIME_ERROR, "saganet_engine_classify: out of memory");
  } catch (const std::exception& err) {
    return fail(SAGANET_RUNTIME_ERROR, err.what());
  }
}

}  // extern "C"
