// The few CUDA facilities the kernels in qdq_cuda_kernels.cuh use, mapped to
// CUDA. tests/cuda_emu/cuda_emu.h maps the same names to plain C++ so the
// kernels and launchers can also run (sequentially) on a host without a GPU.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#define QDQ_KERNEL __global__
#define QDQ_DEV __device__ __forceinline__
#define QDQ_UNROLL _Pragma("unroll")
#define QDQ_UNROLL_4 _Pragma("unroll 4")
#define QDQ_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<static_cast<unsigned>(grid), static_cast<unsigned>(block), 0, stream>>>(__VA_ARGS__)

namespace qdq {
namespace port {

QDQ_DEV uint32_t as_bits(float v) { return __float_as_uint(v); }
QDQ_DEV uint64_t as_bits(double v) { return static_cast<uint64_t>(__double_as_longlong(v)); }
QDQ_DEV float float_from(uint32_t u) { return __uint_as_float(u); }
QDQ_DEV double double_from(uint64_t u) { return __longlong_as_double(static_cast<long long>(u)); }

QDQ_DEV void atomic_min(uint32_t* p, uint32_t v) { atomicMin(reinterpret_cast<unsigned*>(p), v); }
QDQ_DEV void atomic_min(uint64_t* p, uint64_t v) {
  atomicMin(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));
}

QDQ_DEV void atomic_add(double* p, double v) { atomicAdd(p, v); }
QDQ_DEV void atomic_or(uint32_t* p, uint32_t v) { atomicOr(reinterpret_cast<unsigned*>(p), v); }

// merge_keys: the warp-level merge (its own header, so the host can check it in lock step).
#include "qdq_cuda_warp.cuh"

inline int memset_async(void* p, int value, size_t bytes, CUstream_st* s) {
  return static_cast<int>(cudaMemsetAsync(p, value, bytes, s));
}
// From pageable host memory: the source may be reused as soon as this returns.
inline int copy_to_device_async(void* dst, const void* src, size_t bytes, CUstream_st* s) {
  return static_cast<int>(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
}
inline int last_error() { return static_cast<int>(cudaGetLastError()); }

// Blocks that fit on the current device at once (8 x 256 threads per SM),
// cached per device: grid-stride kernels launch no more than this.
inline int64_t resident_blocks() {
  static std::atomic<int64_t> cache[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 1024;
  int64_t blocks = cache[dev].load(std::memory_order_relaxed);
  if (blocks == 0) {
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) sms = 128;
    blocks = int64_t{8} * sms;
    cache[dev].store(blocks, std::memory_order_relaxed);
  }
  return blocks;
}

}  // namespace port
}  // namespace qdq
