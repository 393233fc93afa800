// AVX2 vectors of the compute type, with loads and stores that convert from
// and to each storage type (in registers: F16C for half, integer shifts for
// bfloat16). Include only from translation units compiled with -mavx2 -mf16c,
// and only inside an anonymous namespace there (see qdq_cpu_avx2.cc).
//
// Every operation matches the scalar code of qdq_math.h / qdq_float16.h bit
// for bit: min/max use the same operand order as its comparisons, rounding
// is the IEEE instruction rint/floor compile to, and comparisons are ordered.

// 8 floats: the compute vector of float, half and bfloat16.
struct F32x8 {
  using C = float;
  using V = __m256;
  static constexpr int64_t kLanes = 8;
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V loadc(const float* p) { return _mm256_loadu_ps(p); }
  static void storec(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }  // (a < b) ? a : b
  static V max(V a, V b) { return _mm256_max_ps(a, b); }  // (a > b) ? a : b
  static V rint(V v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V floor(V v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static V bit_and(V a, V b) { return _mm256_and_ps(a, b); }
  static V bit_or(V a, V b) { return _mm256_or_ps(a, b); }
  static V within(V x, V lo, V hi) {
    return _mm256_and_ps(_mm256_cmp_ps(x, lo, _CMP_GE_OQ), _mm256_cmp_ps(x, hi, _CMP_LE_OQ));
  }
  static V unit_if_within(V x, V lo, V hi) { return bit_and(within(x, lo, hi), set1(1.0f)); }
  static V is_nan(V v) { return _mm256_cmp_ps(v, v, _CMP_UNORD_Q); }
  static int zero_mask(V v) { return _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_EQ_OQ)); }
  static V select(V mask, V a, V b) { return _mm256_blendv_ps(b, a, mask); }  // mask ? a : b
  // Horizontal min/max of accumulators that hold no NaN (zero signs may come from any lane).
  static float fold_min(V v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps(m, m, 1)));
  }
  static float fold_max(V v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
  }
};

// 4 doubles.
struct F64x4 {
  using C = double;
  using V = __m256d;
  static constexpr int64_t kLanes = 4;
  static V set1(double v) { return _mm256_set1_pd(v); }
  static V loadc(const double* p) { return _mm256_loadu_pd(p); }
  static void storec(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V min(V a, V b) { return _mm256_min_pd(a, b); }
  static V max(V a, V b) { return _mm256_max_pd(a, b); }
  static V rint(V v) { return _mm256_round_pd(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V floor(V v) { return _mm256_round_pd(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static V bit_and(V a, V b) { return _mm256_and_pd(a, b); }
  static V bit_or(V a, V b) { return _mm256_or_pd(a, b); }
  static V within(V x, V lo, V hi) {
    return _mm256_and_pd(_mm256_cmp_pd(x, lo, _CMP_GE_OQ), _mm256_cmp_pd(x, hi, _CMP_LE_OQ));
  }
  static V unit_if_within(V x, V lo, V hi) { return bit_and(within(x, lo, hi), set1(1.0)); }
  static V is_nan(V v) { return _mm256_cmp_pd(v, v, _CMP_UNORD_Q); }
  static int zero_mask(V v) { return _mm256_movemask_pd(_mm256_cmp_pd(v, _mm256_setzero_pd(), _CMP_EQ_OQ)); }
  static V select(V mask, V a, V b) { return _mm256_blendv_pd(b, a, mask); }
  static double fold_min(V v) {
    const __m128d m = _mm_min_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_min_sd(m, _mm_unpackhi_pd(m, m)));
  }
  static double fold_max(V v) {
    const __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
  }
};

// Storage type -> compute vector. store() writes normally, stream() bypasses
// the caches and needs kLanes * sizeof(T)-byte alignment.
//
// Any narrow storage type computing in float, a newly added one included: eight scalar
// conversions of qdq_float16.h (Compute<T>), so the results are the portable loops' by
// construction. half and bfloat16 convert in registers instead (below);
// QDQ_AVX2_GENERIC_NARROW turns that off, which is how tests/test_generic_lanes.py checks
// this path against the portable loops.
template <typename T>
struct Lanes : F32x8 {
  static_assert(sizeof(compute_t<T>) == sizeof(float), "a narrow type computes in float");
  static V load(const T* p) {
    alignas(32) float f[8];
    for (int i = 0; i < 8; ++i) f[i] = Compute<T>::load(p[i]);
    return _mm256_load_ps(f);
  }
  static void store(T* p, V v) {
    alignas(32) float f[8];
    _mm256_store_ps(f, v);
    for (int i = 0; i < 8; ++i) p[i] = Compute<T>::store(f[i]);
  }
  static void stream(T* p, V v) { store(p, v); }
};

template <>
struct Lanes<float> : F32x8 {
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void stream(float* p, V v) { _mm256_stream_ps(p, v); }
};

template <>
struct Lanes<double> : F64x4 {
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static void stream(double* p, V v) { _mm256_stream_pd(p, v); }
};

#ifndef QDQ_AVX2_GENERIC_NARROW
// half: F16C converts exactly, rounding to nearest even. Only NaN differs from
// float_to_half (it keeps payload bits), so NaN lanes become the sign plus the
// quiet NaN whose conversion is 0x7e00.
template <>
struct Lanes<half_t> : F32x8 {
  static V load(const half_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static __m128i pack(V v) {
    const V quiet =
        _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0f)), _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)));
    return _mm256_cvtps_ph(select(is_nan(v), quiet, v), _MM_FROUND_TO_NEAREST_INT);
  }
  static void store(half_t* p, V v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), pack(v)); }
  static void stream(half_t* p, V v) { _mm_stream_si128(reinterpret_cast<__m128i*>(p), pack(v)); }
};

// bfloat16: the high half of a float; stores round to nearest even as
// float_to_bf16 does (NaN -> sign | 0x7fc0).
template <>
struct Lanes<bf16_t> : F32x8 {
  static V load(const bf16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static __m128i pack(V v) {
    const __m256i x = _mm256_castps_si256(v);
    const __m256i high = _mm256_srli_epi32(x, 16);
    const __m256i odd = _mm256_and_si256(high, _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), odd), 16);
    const V nan = is_nan(v);
    __m256i bits = rounded;
    if (!_mm256_testz_ps(nan, nan)) {  // rare: only NaN lanes need the canonical quiet NaN
      const __m256i nan_bits =
          _mm256_or_si256(_mm256_and_si256(high, _mm256_set1_epi32(0x8000)), _mm256_set1_epi32(0x7fc0));
      bits = _mm256_blendv_epi8(rounded, nan_bits, _mm256_castps_si256(nan));
    }
    // 32 -> 16 bits: packus works per 128-bit half, so gather quadwords 0 and 2.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0x08);
    return _mm256_castsi256_si128(packed);
  }
  static void store(bf16_t* p, V v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), pack(v)); }
  static void stream(bf16_t* p, V v) { _mm_stream_si128(reinterpret_cast<__m128i*>(p), pack(v)); }
};
#endif  // QDQ_AVX2_GENERIC_NARROW
