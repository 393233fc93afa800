// Storage types for half and bfloat16 with bit-exact round-to-nearest-even
// conversions. They are layout-compatible with Eigen::half / Eigen::bfloat16
// (one uint16_t), so the TensorFlow glue can reinterpret its buffers, and they
// compile on host and device, so CPU and CUDA convert identically.
#pragma once

#include <cstdint>
#include <cstring>

#include "qdq_contract.h"  // QDQ_FOR_EACH_TYPE: the types this header gives a compute type
#include "qdq_hd.h"

namespace qdq {

struct half_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

QDQ_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

QDQ_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// IEEE binary16 -> binary32 (exact).
QDQ_HD float half_to_float(half_t h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu;
  const uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
  // Zero or subnormal: man * 2^-24 is exact in float and never subnormal there.
  const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
  return bits_float(sign | float_bits(mag));
}

// binary32 -> binary16, round to nearest even; NaN becomes the quiet NaN 0x7e00.
QDQ_HD half_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return half_t{static_cast<uint16_t>(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u))};
  if (ax >= 0x477ff000u) return half_t{static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520 rounds to inf
  if (ax >= 0x38800000u) {                                                      // normal half
    const uint32_t odd = (ax >> 13) & 1u;
    return half_t{static_cast<uint16_t>(sign | ((ax + 0xc8000fffu + odd) >> 13))};
  }
  if (ax <= 0x33000000u) return half_t{sign};  // <= 2^-25 rounds to zero (ties to even)
  // Subnormal half: round (1.m * 2^(e-150)) / 2^-24 to an integer.
  const uint32_t man = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - (ax >> 23);  // 14..24
  uint32_t q = man >> shift;
  const uint32_t rem = man & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return half_t{static_cast<uint16_t>(sign | q)};
}

QDQ_HD float bf16_to_float(bf16_t b) { return bits_float(static_cast<uint32_t>(b.bits) << 16); }

// binary32 -> bfloat16, round to nearest even; NaN becomes the quiet NaN 0x7fc0 with its sign.
QDQ_HD bf16_t float_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>(((x >> 16) & 0x8000u) | 0x7fc0u)};
  return bf16_t{static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16)};
}

// Compute type and conversions for each storage type: half/bfloat16 compute in float.
template <typename T>
struct Compute {
  using type = T;
  static QDQ_HD T load(T v) { return v; }
  static QDQ_HD T store(T v) { return v; }
};
template <>
struct Compute<half_t> {
  using type = float;
  static QDQ_HD float load(half_t v) { return half_to_float(v); }
  static QDQ_HD half_t store(float v) { return float_to_half(v); }
};
template <>
struct Compute<bf16_t> {
  using type = float;
  static QDQ_HD float load(bf16_t v) { return bf16_to_float(v); }
  static QDQ_HD bf16_t store(float v) { return float_to_bf16(v); }
};

template <typename T>
using compute_t = typename Compute<T>::type;

}  // namespace qdq
