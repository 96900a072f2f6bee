#!/usr/bin/env bash
# Fuzz libsaganet's C/C++ API, the bundle manifest parser and the tile preprocessing with libFuzzer,
# ASan and UBSan (csrc/tests/fuzz_c_api.cpp) for FUZZ_SECONDS (default 60). The corpus grows in
# build/fuzz/corpus across runs; crashes are kept in runs/fuzz/ and fail this script.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${FUZZ_SECONDS:-60}
bin() { if [ -x ".venv/bin/$1" ]; then echo "$PWD/.venv/bin/$1"; else command -v "$1"; fi; }
CMAKE=$(bin cmake)
CLANGXX=$(command -v clang++ || command -v clang++-14 || true)
if [ -z "$CLANGXX" ]; then echo "fuzz: clang++ not found (Debian: apt-get install clang libclang-rt-14-dev)" >&2; exit 1; fi
GEN=(); NINJA=$(bin ninja || true); [ -n "$NINJA" ] && GEN=(-G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA")
[ -f build/fuzz/CMakeCache.txt ] || "$CMAKE" -S . -B build/fuzz "${GEN[@]}" -DCMAKE_CXX_COMPILER="$CLANGXX" \
    -DSAGANET_FUZZ=ON -DSAGANET_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
"$CMAKE" --build build/fuzz --target fuzz_c_api > /dev/null

# Seeds: a real manifest for the parser (first byte 0), and one input per other target.
mkdir -p build/fuzz/seeds build/fuzz/corpus runs/fuzz
{ printf '\0'; cat models/demo-crc7/manifest.json; } > build/fuzz/seeds/manifest
printf '\1\2\3\4\4\0\0\200\63\0' > build/fuzz/seeds/c_pool
printf '\2\1\2\2\2\20\4\4\0' > build/fuzz/seeds/cpp_pool
printf '\3\232\231\231\76\17\0\0\0\0' > build/fuzz/seeds/preprocess
LOG=runs/fuzz/last.log
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./build/fuzz/fuzz_c_api build/fuzz/corpus build/fuzz/seeds \
    -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 \
    -artifact_prefix=runs/fuzz/ > "$LOG" 2>&1 || { tail -40 "$LOG"; echo "fuzz: FAILED; the input is in runs/fuzz/"; exit 1; }
echo "fuzz: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$LOG" | grep -o '[0-9]*$') executions in" \
     "${SECONDS_TO_RUN} s, 0 findings; corpus $(ls build/fuzz/corpus | wc -l) inputs (log: $LOG)"
