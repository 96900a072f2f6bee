// A bundle's manifest.json, parsed and checked (saganet/bundle.py writes it; saganet/bundle.py's
// Manifest reads the same fields). No libtorch and no file access: the engine reads the files and
// checks what needs this machine (CPU flags, torch version); the fuzz target feeds it any bytes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/preprocess.h"  // MaskConfig

namespace saganet {

constexpr int kFormatVersion = 2;                              // saganet/bundle.py FORMAT_VERSION
constexpr const char* kPackageTileKey = "saganet_tile_size";  // saganet/bundle.py PACKAGE_TILE_KEY

struct BundleManifest {
  int format_version = 0;
  std::map<std::string, std::string> files;  // plain file name -> sha256 (hex)
  std::vector<std::string> classes;
  int tile = 0;
  double mpp = 0;
  bool length_head = true;
  float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};
  MaskConfig mask;
  bool has_aoti = false;  // the fields below are read only when it is true
  std::string aoti_machine, aoti_torch;
  std::vector<std::string> aoti_flags;
  int64_t max_batch = 1024;
};

// Parses TEXT (the content of WHERE, named in every message); throws saganet::Error
// (SAGANET_INVALID_ARGUMENT) naming the field that is missing, mistyped or out of range.
BundleManifest parse_manifest(const std::string& text, const std::string& where);

// "2.13.0+cpu" -> "2.13.0": AOTInductor packages run only on the torch release that compiled them
// (the same rule as saganet/engine/aoti_backend.py).
std::string torch_release(const std::string& version);

}  // namespace saganet
