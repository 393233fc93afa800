// Portability macros so one header compiles under g++ and nvcc alike.
#pragma once

// QDQ_INLINE: always inlined on the host, at -O0 too. The shared headers' functions are also
// compiled into the AVX2 unit (qdq_cpu_avx2.cc, built with -mavx2); a copy emitted out of line
// there would be a weak symbol the linker may hand to the portable loops as well, which then
// fail on a CPU without AVX2. tests/test_build_files.py checks that the unit exports nothing
// but its tables.
#if defined(__GNUC__) || defined(__clang__)
#define QDQ_INLINE inline __attribute__((always_inline))
#else
#define QDQ_INLINE inline
#endif

#if defined(__CUDACC__)
#define QDQ_HD __host__ __device__ __forceinline__
#else
#define QDQ_HD QDQ_INLINE
#endif
