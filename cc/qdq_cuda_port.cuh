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

// Folds each lane's (lo, hi) keys into slot `c` of the accumulators with one
// atomic per distinct channel per warp. Every lane of the warp must call it
// together (the callers' conditions are block-uniform); lanes holding nothing
// pass `none` keys (and any c).
template <typename Key>
QDQ_DEV void merge_keys(Key* lo_acc, Key* hi_acc, int64_t c, Key lo, Key hi, Key none) {
  const unsigned full = 0xffffffffu;
  const int lane = static_cast<int>(threadIdx.x & 31u);
  const int64_t c0 = __shfl_sync(full, c, 0);
  if (__all_sync(full, lo == none || c == c0)) {  // one channel (the common case): a tree
    for (int offset = 16; offset > 0; offset >>= 1) {
      const Key olo = __shfl_xor_sync(full, lo, offset);
      const Key ohi = __shfl_xor_sync(full, hi, offset);
      lo = olo < lo ? olo : lo;
      hi = ohi < hi ? ohi : hi;
    }
    if (lane == 0 && lo != none) {
      atomic_min(lo_acc + c0, lo);
      atomic_min(hi_acc + c0, hi);
    }
    return;
  }
  // Several channels: each lane folds in its peers (same channel), the first peer writes.
  const unsigned peers = __match_any_sync(full, static_cast<unsigned long long>(c));
  for (int i = 0; i < 32; ++i) {
    const Key olo = __shfl_sync(full, lo, i);
    const Key ohi = __shfl_sync(full, hi, i);
    if ((peers >> i) & 1u) {
      lo = olo < lo ? olo : lo;
      hi = ohi < hi ? ohi : hi;
    }
  }
  if (lane == __ffs(static_cast<int>(peers)) - 1 && lo != none) {
    atomic_min(lo_acc + c, lo);
    atomic_min(hi_acc + c, hi);
  }
}

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
