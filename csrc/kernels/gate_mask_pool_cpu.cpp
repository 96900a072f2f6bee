// CPU kernels for gate-mask pooling: OpenMP over (batch, channel or pixel blocks), F read once,
// inner loops vectorised. The hot loops are compiled twice (AVX2+FMA and baseline x86-64) with
// runtime dispatch, so one binary runs everywhere and uses AVX2 where the CPU has it.
// Element types: float, bfloat16 (float accumulation), double (double accumulation, for gradcheck).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/gate_mask_pool.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(SAGANET_NO_CLONES)
#define SAGANET_CLONES __attribute__((target_clones("arch=haswell", "default")))  // AVX2 + FMA, or baseline
#else
#define SAGANET_CLONES
#endif

namespace saganet {
namespace {

struct bf16 {
  uint16_t bits;
};

inline float to_acc(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }

inline void store(bf16* p, float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    p->bits = 0x7fc0;
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  p->bits = static_cast<uint16_t>(u >> 16);
}
inline void store(float* p, float v) { *p = v; }
inline void store(double* p, double v) { *p = v; }

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

// ---- vectorised inner loops over contiguous memory, one clone per instruction set

#define SAGANET_DOT(T, A)                                             \
  SAGANET_CLONES A dot(const T* f, const A* w, int64_t n) {           \
    A acc = 0;                                                        \
    _Pragma("omp simd reduction(+ : acc)") for (int64_t i = 0; i < n; ++i) acc += to_acc(f[i]) * w[i]; \
    return acc;                                                       \
  }
SAGANET_DOT(float, float)
SAGANET_DOT(bf16, float)
SAGANET_DOT(double, double)

#define SAGANET_AXPY(T, A)                                                \
  SAGANET_CLONES void axpy(A* acc, const T* f, A a, int64_t n) {          \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) acc[i] += a * to_acc(f[i]); \
  }
SAGANET_AXPY(float, float)
SAGANET_AXPY(bf16, float)
SAGANET_AXPY(double, double)

// NCHW backward, one channel over a pixel block: t[i] += g * (f[i] - zc); df[i] = s * w[i]
#define SAGANET_BACK_PLANE(T)                                                                      \
  SAGANET_CLONES void back_plane(T* t, T* df, const T* f, const T* w, T g, T zc, T s, int64_t n) { \
    _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) {                                         \
      t[i] += g * (f[i] - zc);                                                                     \
      df[i] = s * w[i];                                                                            \
    }                                                                                              \
  }
SAGANET_BACK_PLANE(float)
SAGANET_BACK_PLANE(double)

// NHWC backward, one pixel over all channels: returns sum_c g[c] (f[c] - z[c]); df[c] = g[c] * s
#define SAGANET_BACK_ROW(T)                                                                      \
  SAGANET_CLONES T back_row(T* df, const T* f, const T* g, const T* z, T s, int64_t n) {         \
    T acc = 0;                                                                                   \
    _Pragma("omp simd reduction(+ : acc)") for (int64_t i = 0; i < n; ++i) {                    \
      acc += g[i] * (f[i] - z[i]);                                                               \
      df[i] = g[i] * s;                                                                          \
    }                                                                                            \
    return acc;                                                                                  \
  }
SAGANET_BACK_ROW(float)
SAGANET_BACK_ROW(double)

bool is_nchw(const View4& v) { return v.sw == 1 && v.sh == v.w; }                        // (b,c) planes contiguous
bool is_nhwc(const View4& v) { return v.sc == 1 && v.sw == v.c && v.sh == v.w * v.c; }  // channels contiguous
bool same_strides(const View4& a, const View4& b) { return a.sn == b.sn && a.sc == b.sc && a.sh == b.sh && a.sw == b.sw; }

template <typename T> struct Pool {
  using A = typename AccOf<T>::type;
  const GateMaskPoolArgs& a;
  const T* F;
  const A* G;
  int64_t B, C, H, W, HW;

  explicit Pool(const GateMaskPoolArgs& args)
      : a(args), F(static_cast<const T*>(args.features)), G(static_cast<const A*>(args.gate_logits)), B(args.f.n),
        C(args.f.c), H(args.f.h), W(args.f.w), HW(args.f.h * args.f.w) {}

  A mask(int64_t b, int64_t p) const {
    const int64_t i = b * a.m_sn + (p / W) * a.m_sh + (p % W) * a.m_sw;
    return a.mask_is_bool ? A(static_cast<const uint8_t*>(a.mask)[i] ? 1 : 0) : static_cast<const A*>(a.mask)[i];
  }
  A sigmoid(int64_t b, int64_t p) const {
    return A(1) / (A(1) + std::exp(-G[b * a.g_sn + (p / W) * a.g_sh + (p % W) * a.g_sw]));
  }
  T at(int64_t b, int64_t c, int64_t p) const { return F[b * a.f.sn + c * a.f.sc + (p / W) * a.f.sh + (p % W) * a.f.sw]; }

  // weights (B,HW) = sigmoid(G) * M; D[b] = sum + eps (summed in double: HW can be large).
  void weights(A* w, A* sig, std::vector<A>& denom) const {
    denom.assign(B, A(0));
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      double s = 0.0;
      for (int64_t p = 0; p < HW; ++p) {
        const A g = sigmoid(b, p), v = g * mask(b, p);
        w[b * HW + p] = v;
        if (sig) sig[b * HW + p] = g;
        s += v;
      }
      denom[b] = static_cast<A>(s) + static_cast<A>(a.eps);
    }
  }

  void forward(A* z, A* w) const {
    std::vector<A> denom;
    weights(w, nullptr, denom);
    const View4& f = a.f;
    if (is_nchw(f)) {
#pragma omp parallel for collapse(2) schedule(static)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) z[b * C + c] = dot(F + b * f.sn + c * f.sc, w + b * HW, HW) / denom[b];
    } else if (is_nhwc(f)) {
      constexpr int64_t kBlock = 1024;  // channels per task: whole pixel rows up to C=1024, accumulator in L1
      const int64_t nblk = (C + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) schedule(static)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t blk = 0; blk < nblk; ++blk) {
          const int64_t c0 = blk * kBlock, n = std::min(kBlock, C - c0);
          A acc[kBlock] = {};
          for (int64_t p = 0; p < HW; ++p) axpy(acc, F + b * f.sn + p * C + c0, w[b * HW + p], n);
          for (int64_t i = 0; i < n; ++i) z[b * C + c0 + i] = acc[i] / denom[b];
        }
    } else {  // any strides
#pragma omp parallel for collapse(2) schedule(static)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) {
          A s = 0;
          for (int64_t p = 0; p < HW; ++p) s += to_acc(at(b, c, p)) * w[b * HW + p];
          z[b * C + c] = s / denom[b];
        }
    }
  }

  // dG from t[b,p] = sum_c dz[b,c] (F[b,c,p] - z[b,c]): z is subtracted inside the sum, which
  // avoids the cancellation of sum(dz F) - sum(dz z) when C is large.
  void backward(const A* gz, const A* z, T* dF, const View4& gf, A* dG) const {
    std::vector<A> w(B * HW), sig(B * HW), denom;
    weights(w.data(), sig.data(), denom);
    auto finish = [&](int64_t b, int64_t p, A t) {
      const A s = sig[b * HW + p];
      dG[b * HW + p] = t / denom[b] * mask(b, p) * s * (A(1) - s);
    };
    const View4& f = a.f;
    if constexpr (std::is_same_v<T, A>) {  // float or double: vectorised paths for both layouts
      if (same_strides(f, gf) && is_nchw(f)) {
        constexpr int64_t kBlock = 1024;  // pixels per task
        const int64_t nblk = (HW + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t blk = 0; blk < nblk; ++blk) {
            const int64_t p0 = blk * kBlock, n = std::min(kBlock, HW - p0);
            A t[kBlock] = {};
            for (int64_t c = 0; c < C; ++c) {
              const A g = gz[b * C + c];
              const int64_t off = b * f.sn + c * f.sc + p0;
              back_plane(t, dF + off, F + off, w.data() + b * HW + p0, g, z[b * C + c], g / denom[b], n);
            }
            for (int64_t i = 0; i < n; ++i) finish(b, p0 + i, t[i]);
          }
        return;
      }
      if (same_strides(f, gf) && is_nhwc(f)) {
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t p = 0; p < HW; ++p) {
            const int64_t off = b * f.sn + p * C;
            finish(b, p, back_row(dF + off, F + off, gz + b * C, z + b * C, w[b * HW + p] / denom[b], C));
          }
        return;
      }
    }
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; ++b)  // any strides, bfloat16
      for (int64_t p = 0; p < HW; ++p) {
        const int64_t y = p / W, x = p % W;
        const A s = w[b * HW + p] / denom[b];
        A t = 0;
        for (int64_t c = 0; c < C; ++c) {
          const A g = gz[b * C + c];
          t += g * (to_acc(at(b, c, p)) - z[b * C + c]);
          store(dF + b * gf.sn + c * gf.sc + y * gf.sh + x * gf.sw, g * s);
        }
        finish(b, p, t);
      }
  }
};

}  // namespace

std::string validate(const GateMaskPoolArgs& a) {
  if (!a.features || !a.gate_logits || !a.mask) return "null pointer among features, gate_logits, mask";
  if (a.f.n <= 0 || a.f.c <= 0 || a.f.h <= 0 || a.f.w <= 0) return "every size of features (B,C,H,W) must be positive";
  if (a.f.sn < 0 || a.f.sc < 0 || a.f.sh < 0 || a.f.sw < 0 || a.g_sn < 0 || a.g_sh < 0 || a.g_sw < 0 || a.m_sn < 0 ||
      a.m_sh < 0 || a.m_sw < 0)
    return "negative strides are not supported";
  if (a.dtype != DType::Float32 && a.dtype != DType::BFloat16 && a.dtype != DType::Float16 && a.dtype != DType::Float64)
    return "unknown dtype";
  if (!(a.eps > 0.f) || !std::isfinite(a.eps)) return "eps must be a positive finite number";
  return {};
}

void gate_mask_pool_forward_cpu(const GateMaskPoolArgs& a, void* z, void* weights) {
  switch (a.dtype) {
    case DType::Float32: return Pool<float>(a).forward(static_cast<float*>(z), static_cast<float*>(weights));
    case DType::BFloat16: return Pool<bf16>(a).forward(static_cast<float*>(z), static_cast<float*>(weights));
    case DType::Float64: return Pool<double>(a).forward(static_cast<double*>(z), static_cast<double*>(weights));
    case DType::Float16: break;  // refused by the adapters: CUDA only
  }
}

void gate_mask_pool_backward_cpu(const GateMaskPoolArgs& a, const void* grad_z, const void* z, void* grad_features,
                                 const View4& gf, void* grad_gate) {
  switch (a.dtype) {
    case DType::Float32:
      return Pool<float>(a).backward(static_cast<const float*>(grad_z), static_cast<const float*>(z),
                                     static_cast<float*>(grad_features), gf, static_cast<float*>(grad_gate));
    case DType::BFloat16:
      return Pool<bf16>(a).backward(static_cast<const float*>(grad_z), static_cast<const float*>(z),
                                    static_cast<bf16*>(grad_features), gf, static_cast<float*>(grad_gate));
    case DType::Float64:
      return Pool<double>(a).backward(static_cast<const double*>(grad_z), static_cast<const double*>(z),
                                      static_cast<double*>(grad_features), gf, static_cast<double*>(grad_gate));
    case DType::Float16: break;
  }
}

}  // namespace saganet
