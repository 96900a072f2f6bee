// The native engine over a bundle (see native_engine.h). The bundle format is saganet/bundle.py's:
// manifest.json with sha256 of every file, and model.pt2, an AOTInductor package whose graph
// calls saganet::gate_mask_pool. That op is registered by libsaganet_torch, which this library
// links with --no-as-needed: it must be loaded before the package, or the package loader fails
// with "Could not find schema for saganet::gate_mask_pool".
#include "engine/native_engine.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <openssl/evp.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/version.h>

#include <algorithm>
#include <fstream>
#include <sys/stat.h>
#include <iterator>
#include <limits>
#include <mutex>
#include <set>
#include <sstream>

#include "engine/manifest.h"
#include "engine/preprocess.h"
#include "saganet/saganet.hpp"

extern "C" uint64_t saganet_torch_cpu_forward_calls(void);

namespace saganet {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error(SAGANET_INVALID_ARGUMENT, msg); }

// A bundle file must be a regular file in the bundle itself: a symbolic link could lead out of the
// bundle, and a FIFO or a device (/dev/zero) would block or never end a read.
void require_regular(const std::string& path, const std::string& what) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) fail(path + ": " + what);
  if (S_ISLNK(st.st_mode)) fail(path + ": is a symbolic link; bundle files must be regular files inside the bundle");
  if (!S_ISREG(st.st_mode)) fail(path + ": is not a regular file (a FIFO, device or folder); refused");
}

// n tiles of `per_tile` floats must fit in memory arithmetic without overflow (2^54 tiles wrapped).
void require_countable(int64_t n, int64_t per_tile) {
  if (n > std::numeric_limits<int64_t>::max() / int64_t(sizeof(float)) / per_tile)
    throw Error(SAGANET_INVALID_ARGUMENT, std::to_string(n) + " tiles are more than this machine can address");
}

std::string sha256_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), std::streamsize(buf.size()));
    EVP_DigestUpdate(ctx.get(), buf.data(), size_t(f.gcount()));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), digest, &len);
  std::ostringstream hex;
  for (unsigned int i = 0; i < len; ++i) hex << "0123456789abcdef"[digest[i] >> 4] << "0123456789abcdef"[digest[i] & 15];
  return hex.str();
}

std::set<std::string> cpu_flags() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("flags", 0) == 0) {
      std::istringstream words(line.substr(line.find(':') + 1));
      return {std::istream_iterator<std::string>(words), std::istream_iterator<std::string>()};
    }
  return {};
}

std::string machine() {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "unknown";
#endif
}


std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": cannot open");
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Version 2 keeps the manifest's own sha256 beside it: an edited manifest is refused.
void check_manifest_digest(const std::string& dir, const std::string& mpath) {
  const std::string dpath = dir + "/manifest.sha256";
  require_regular(dpath, "missing; it holds the manifest's sha256 (format_version 2)");
  std::ifstream df(dpath);
  std::string recorded;
  df >> recorded;
  if (recorded != sha256_file(mpath))
    fail(mpath + ": changed after export (its sha256 is not the one in manifest.sha256); re-export the bundle rather than edit it");
}

// Every file the manifest lists must be there, a regular file, and unchanged.
void check_files(const std::string& dir, const BundleManifest& m) {
  for (const auto& [name, digest] : m.files) {
    const std::string path = dir + "/" + name;
    require_regular(path, "listed in the manifest but missing");
    if (sha256_file(path) != digest) fail(path + ": sha256 does not match the manifest; the file is damaged or was changed");
  }
}

// The AOTInductor package runs only on the CPU (instruction sets) and torch release it was compiled for.
void check_package_fits(const std::string& mpath, const BundleManifest& m) {
  if (!m.has_aoti) fail(mpath + ": the bundle has no AOTInductor package (export it with --formats aoti)");
  if (m.aoti_machine != machine())
    fail(mpath + ": model.pt2 was compiled for " + m.aoti_machine + ", this machine is " + machine());
  const auto flags = cpu_flags();
  for (const auto& flag : m.aoti_flags)
    if (!flags.count(flag)) fail(mpath + ": model.pt2 was compiled for a CPU with " + flag + ", which this CPU lacks");
  const std::string here = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                           std::to_string(TORCH_VERSION_PATCH);
  if (torch_release(m.aoti_torch) != here)
    fail(mpath + ": model.pt2 was compiled with torch " + torch_release(m.aoti_torch) + ", this engine has torch " + here);
}

}  // namespace

struct Engine::Impl {
  std::string dir, id;
  BundleManifest m;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  mutable std::mutex run_mutex;
};

Engine::Engine(const std::string& bundle_dir, int threads) : impl_(std::make_unique<Impl>()) {
  Impl& b = *impl_;
  b.dir = bundle_dir;
  const std::string mpath = bundle_dir + "/manifest.json";
  require_regular(mpath, "no manifest.json; not a saganet bundle");
  b.m = parse_manifest(read_file(mpath), mpath);
  if (b.m.format_version >= 2) check_manifest_digest(bundle_dir, mpath);
  check_files(bundle_dir, b.m);
  b.id = bundle_dir.substr(bundle_dir.find_last_of('/') + 1) + "@" + b.m.files.at("weights.safetensors").substr(0, 12);
  check_package_fits(mpath, b.m);

  if (threads > 0) at::set_num_threads(threads);
  try {
    b.loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(bundle_dir + "/model.pt2");
  } catch (const std::exception& e) {
    throw Error(SAGANET_RUNTIME_ERROR, bundle_dir + "/model.pt2: cannot load the AOTInductor package (" + e.what() + ")");
  }
  // The compiled code reads tiles of the size it was compiled for, whatever it is given.
  const auto meta = b.loader->get_metadata();
  const auto recorded = meta.find(kPackageTileKey);
  if (recorded == meta.end())
    fail(bundle_dir + "/model.pt2: does not record the tile size it was compiled for (exported before saganet bundle "
         "format 2); re-export: saganet export " + bundle_dir + " --out NEW");
  if (recorded->second != std::to_string(b.m.tile))
    fail(bundle_dir + "/model.pt2: compiled for " + recorded->second + " px tiles, but the manifest says " +
         std::to_string(b.m.tile) + "; the bundle is inconsistent");
}

Engine::~Engine() = default;

int Engine::tile_size() const { return impl_->m.tile; }
double Engine::mpp() const { return impl_->m.mpp; }
const std::vector<std::string>& Engine::class_names() const { return impl_->m.classes; }
bool Engine::length_head() const { return impl_->m.length_head; }
const std::string& Engine::model_id() const { return impl_->id; }

void Engine::preprocess(const uint8_t* tiles, int64_t n, float* image, float* mask) const {
  const Impl& b = *impl_;
  const int64_t t = b.m.tile, pixels = t * t;
  // One tile per task; each tile's work is serial and independent of the others.
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> v(static_cast<size_t>(pixels));
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* rgb = tiles + i * pixels * 3;
      valid_area_mask(rgb, int(t), int(t), b.m.mask, v.data());
      float* m = mask + i * pixels;
      for (int64_t p = 0; p < pixels; ++p) m[p] = float(v[size_t(p)]);
      normalise(rgb, int(t), int(t), b.m.mean, b.m.std, image + i * 3 * pixels);
    }
  });
}

EngineOutput Engine::run(const float* image, const float* mask, int64_t n) const {
  const Impl& b = *impl_;
  if (n < 1) fail("no tiles given");
  require_countable(n, 4 * int64_t(b.m.tile) * b.m.tile);
  const int64_t t = b.m.tile;
  EngineOutput out;
  out.n = n;
  out.classes = int64_t(b.m.classes.size());
  c10::InferenceMode guard;
  for (int64_t s = 0; s < n; s += b.m.max_batch) {
    const int64_t m = std::min(b.m.max_batch, n - s);
    // from_blob does not copy; the package only reads its inputs.
    auto x = at::from_blob(const_cast<float*>(image + s * 3 * t * t), {m, 3, t, t}, at::kFloat);
    auto k = at::from_blob(const_cast<float*>(mask + s * t * t), {m, 1, t, t}, at::kFloat);
    std::vector<at::Tensor> res;
    {
      std::lock_guard<std::mutex> lock(b.run_mutex);
      res = b.loader->run({x, k});
    }
    if (res.size() != 3 || res[0].size(0) != m || res[0].size(1) != out.classes)
      throw Error(SAGANET_RUNTIME_ERROR, b.dir + "/model.pt2: unexpected outputs; was it exported by saganet?");
    const auto probs = res[0].contiguous(), scores = res[1].contiguous(), gate = res[2].contiguous();
    if (s == 0) {
      out.gate_h = gate.size(2);
      out.gate_w = gate.size(3);
    }
    out.probs.insert(out.probs.end(), probs.data_ptr<float>(), probs.data_ptr<float>() + probs.numel());
    out.scores.insert(out.scores.end(), scores.data_ptr<float>(), scores.data_ptr<float>() + scores.numel());
    out.gate.insert(out.gate.end(), gate.data_ptr<float>(), gate.data_ptr<float>() + gate.numel());
  }
  return out;
}

EngineOutput Engine::classify(const uint8_t* tiles, int64_t n) const {
  if (n < 1) fail("no tiles given");
  const int64_t pixels = int64_t(impl_->m.tile) * impl_->m.tile;
  require_countable(n, 4 * pixels);
  std::vector<float> image(size_t(n * 3 * pixels)), mask(size_t(n * pixels));
  preprocess(tiles, n, image.data(), mask.data());
  EngineOutput out = run(image.data(), mask.data(), n);
  out.valid_fraction.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0;
    for (int64_t p = 0; p < pixels; ++p) sum += mask[size_t(i * pixels + p)];
    out.valid_fraction[size_t(i)] = float(sum / double(pixels));
  }
  return out;
}

uint64_t fused_op_calls() { return saganet_torch_cpu_forward_calls(); }

}  // namespace saganet
