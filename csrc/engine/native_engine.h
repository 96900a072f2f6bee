// The native inference engine: a bundle's AOTInductor package run through libtorch, with the
// preprocessing (valid-area mask, normalisation) in C++. The C API (saganet/engine.h) and the
// pybind11 module wrap this class.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "saganet/saganet.h"  // SAGANET_API

namespace saganet {

struct EngineOutput {
  int64_t n = 0, classes = 0, gate_h = 0, gate_w = 0;
  std::vector<float> probs;           // n x classes
  std::vector<float> scores;          // n x classes: class-vector lengths (length head) or logits
  std::vector<float> gate;            // n x gate_h x gate_w
  std::vector<float> valid_fraction;  // n (classify only; empty after run)
};

class SAGANET_API Engine {
 public:
  // Opens BUNDLE: checks format, version and every file's sha256, that the AOTInductor package
  // fits this CPU and torch, then loads it. Throws saganet::Error with the reason.
  explicit Engine(const std::string& bundle_dir, int threads = 0);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  int tile_size() const;
  double mpp() const;
  const std::vector<std::string>& class_names() const;
  bool length_head() const;
  const std::string& model_id() const;

  // tiles: n x T x T x 3 uint8 RGB -> image n x 3 x T x T and mask n x 1 x T x T, float32.
  void preprocess(const uint8_t* tiles, int64_t n, float* image, float* mask) const;
  // The network on preprocessed inputs. Thread-safe.
  EngineOutput run(const float* image, const float* mask, int64_t n) const;
  // preprocess + run. Thread-safe: calls may overlap; the network runs one batch at a time.
  EngineOutput classify(const uint8_t* tiles, int64_t n) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Calls of the fused gate_mask_pool CPU kernel in this process (from libsaganet_torch).
SAGANET_API uint64_t fused_op_calls();

}  // namespace saganet
