// Parsing and checking a bundle manifest (see manifest.h).
#include "engine/manifest.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "saganet/saganet.hpp"

namespace saganet {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& msg) { throw Error(SAGANET_INVALID_ARGUMENT, msg); }

template <typename T>
T field(const json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) fail(where + ": field '" + key + "' is missing");
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    fail(where + ": field '" + key + "' has the wrong type");
  }
}

// A JSON number that must fit the C++ type it is read into (nlohmann converts 1e300 to int silently).
int bounded_int(const json& j, const char* key, const std::string& where, int lo, int hi) {
  const double v = field<double>(j, key, where);
  if (!(v >= lo && v <= hi) || v != std::floor(v))
    fail(where + ": field '" + key + "' must be a whole number from " + std::to_string(lo) + " to " + std::to_string(hi));
  return int(v);
}

float finite_float(const json& j, const char* key, const std::string& where) {
  const double v = field<double>(j, key, where);
  if (!std::isfinite(v) || std::fabs(v) > 1e30) fail(where + ": field '" + key + "' must be a finite number");
  return float(v);
}

void parse_mask(const json& mc, const std::string& where, MaskConfig& mask) {
  if (!mc.is_object()) fail(where + ": preprocessing.mask must be an object");
  if (!mc.contains("nuclei_threshold") || !mc.at("nuclei_threshold").is_number())
    fail(where + ": mask nuclei_threshold '" + (mc.contains("nuclei_threshold") ? mc.at("nuclei_threshold").dump() : "") +
         "' is not a number; the native engine supports fixed thresholds only");
  mask.tissue_od = finite_float(mc, "tissue_od", where);
  mask.focus_window = bounded_int(mc, "focus_window", where, 1, 4096);
  mask.focus_min = finite_float(mc, "focus_min", where);
  // Bundles made before the adaptive focus threshold have neither field: the fixed focus_min.
  mask.focus_relative = mc.contains("focus_relative") ? finite_float(mc, "focus_relative", where) : 0.0f;
  mask.focus_floor = mc.contains("focus_floor") ? finite_float(mc, "focus_floor", where) : 0.0f;
  mask.nuclei_threshold = finite_float(mc, "nuclei_threshold", where);
  mask.cell_window = bounded_int(mc, "cell_window", where, 1, 4096);
  mask.cell_density_min = finite_float(mc, "cell_density_min", where);
  mask.min_region = bounded_int(mc, "min_region", where, 0, 1 << 30);
}

void parse_preprocessing(const json& prep, const std::string& where, BundleManifest& b) {
  if (!prep.is_object()) fail(where + ": preprocessing must be an object");
  if (prep.contains("stain_target") && !prep.at("stain_target").is_null())
    fail(where + ": the bundle uses stain normalisation, which the native engine does not implement; use another backend");
  if (prep.contains("scale") && !(prep.at("scale").is_number() && prep.at("scale").get<double>() == 1.0))
    fail(where + ": preprocessing.scale must be 1 in a bundle");
  const auto mean = field<std::vector<double>>(prep, "mean", where + " preprocessing");
  const auto sd = field<std::vector<double>>(prep, "std", where + " preprocessing");
  if (mean.size() != 3 || sd.size() != 3) fail(where + ": preprocessing mean and std must have 3 values");
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(mean[c]) || !(sd[c] > 0) || !std::isfinite(sd[c]))
      fail(where + ": preprocessing mean must be finite and std positive and finite");
    b.mean[c] = float(mean[c]);
    b.std[c] = float(sd[c]);
  }
  parse_mask(field<json>(prep, "mask", where + " preprocessing"), where, b.mask);
}

void parse_aoti(const json& formats, const std::string& where, BundleManifest& b) {
  if (!formats.is_object()) fail(where + ": 'formats' must be an object");
  b.has_aoti = formats.contains("aoti");
  if (!b.has_aoti) return;
  const json& aoti = formats.at("aoti");
  if (!aoti.is_object()) fail(where + ": formats.aoti must be an object");
  const json isa = aoti.contains("isa") ? aoti.at("isa") : json::object();
  if (!isa.is_object()) fail(where + ": formats.aoti.isa must be an object");
  b.aoti_machine = isa.contains("machine") ? field<std::string>(isa, "machine", where + " formats.aoti.isa") : "?";
  if (isa.contains("flags")) b.aoti_flags = field<std::vector<std::string>>(isa, "flags", where + " formats.aoti.isa");
  b.aoti_torch = aoti.contains("torch") ? field<std::string>(aoti, "torch", where + " formats.aoti") : "?";
  if (aoti.contains("max_batch")) b.max_batch = bounded_int(aoti, "max_batch", where + " formats.aoti", 1, 1 << 20);
}

}  // namespace

std::string torch_release(const std::string& version) { return version.substr(0, version.find('+')); }

BundleManifest parse_manifest(const std::string& text, const std::string& where) {
  // Depth-limited: a manifest nested 100,000 deep is refused before it can exhaust the stack.
  bool too_deep = false;
  json m;
  try {
    m = json::parse(text, [&](int depth, json::parse_event_t, json&) {
      too_deep = too_deep || depth > 64;
      return !too_deep;
    });
  } catch (const json::exception& e) {
    fail(where + ": not valid JSON (" + e.what() + ")");
  }
  if (too_deep) fail(where + ": nested more than 64 levels deep; not a saganet manifest");
  if (!m.is_object() || !m.contains("format") || m.at("format") != "saganet-bundle") fail(where + ": not a saganet bundle");
  BundleManifest b;
  b.format_version = bounded_int(m, "format_version", where, 0, 1 << 20);
  if (b.format_version > kFormatVersion || b.format_version < 1)
    fail(where + ": format_version " + std::to_string(b.format_version) + "; this engine reads 1.." +
         std::to_string(kFormatVersion));

  const json files = field<json>(m, "files", where);
  if (!files.is_object() || !files.contains("weights.safetensors")) fail(where + ": 'files' lacks weights.safetensors");
  for (const auto& [name, digest] : files.items()) {
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos)
      fail(where + ": file name '" + name + "' is not a plain name inside the bundle");
    if (!digest.is_string() || digest.get<std::string>().size() != 64)
      fail(where + ": files['" + name + "'] must be a sha256 in hex");
    b.files[name] = digest.get<std::string>();
  }

  b.classes = field<std::vector<std::string>>(m, "class_names", where);
  b.tile = bounded_int(m, "tile_size", where, 1, 1 << 14);
  b.mpp = field<double>(m, "mpp", where);
  if (b.classes.empty() || !(b.mpp > 0) || !std::isfinite(b.mpp))
    fail(where + ": class_names must be non-empty and mpp positive and finite");
  const json model = field<json>(m, "model", where);
  if (!model.is_object()) fail(where + ": 'model' must be an object");
  b.length_head = !model.contains("head") || model.at("head") == "length";
  parse_preprocessing(field<json>(m, "preprocessing", where), where, b);
  parse_aoti(field<json>(m, "formats", where), where, b);
  return b;
}

}  // namespace saganet
