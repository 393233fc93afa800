// Portability macros so one header compiles under g++ and nvcc alike.
#pragma once

#if defined(__CUDACC__)
#define QDQ_HD __host__ __device__ __forceinline__
#else
#define QDQ_HD inline
#endif
