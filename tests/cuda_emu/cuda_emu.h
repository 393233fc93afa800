// Host emulation of the port layer of cc/qdq_cuda_kernels.cuh: a launch runs
// every thread of every block one after another on the calling thread. The
// kernels use no shared memory or barriers, and a warp merge is the same
// min/max whether lanes are combined first or not, so a sequential run gives
// the device's answer; tests/cuda_emu/emu_check.cc compares it with the CPU path.
// The warp merge itself (cc/qdq_cuda_warp.cuh) is replaced here by its sequential
// meaning; tests/cuda_emu/warp_check.cc runs the real one with 32 lanes in lock step.
#pragma once

#include <cstdint>
#include <cstring>
#include <utility>

struct CUstream_st {};

struct EmuDim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline EmuDim3 blockIdx, threadIdx, blockDim, gridDim;

#define QDQ_KERNEL inline
#define QDQ_DEV inline
#define QDQ_UNROLL
#define QDQ_UNROLL_4

namespace qdq {
namespace port {

inline int64_t emu_launches = 0;
inline int64_t emu_resident_blocks = 6;  // small grids exercise the grid-stride loops

template <typename Kernel, typename... Args>
void emu_launch(Kernel kernel, int64_t grid, int64_t block, Args... args) {
  ++emu_launches;
  gridDim.x = static_cast<unsigned>(grid);
  blockDim.x = static_cast<unsigned>(block);
  for (int64_t b = 0; b < grid; ++b) {
    for (int64_t t = 0; t < block; ++t) {
      blockIdx.x = static_cast<unsigned>(b);
      threadIdx.x = static_cast<unsigned>(t);
      kernel(args...);
    }
  }
}

template <typename To, typename From>
To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To out;
  std::memcpy(&out, &v, sizeof(out));
  return out;
}
inline uint32_t as_bits(float v) { return bit_cast<uint32_t>(v); }
inline uint64_t as_bits(double v) { return bit_cast<uint64_t>(v); }
inline float float_from(uint32_t u) { return bit_cast<float>(u); }
inline double double_from(uint64_t u) { return bit_cast<double>(u); }

inline void atomic_add(double* p, double v) { *p += v; }
inline void atomic_or(uint32_t* p, uint32_t v) { *p |= v; }

template <typename Key>
void merge_keys(Key* lo_acc, Key* hi_acc, int64_t c, Key lo, Key hi, Key none) {
  if (lo == none) return;
  if (lo < lo_acc[c]) lo_acc[c] = lo;
  if (hi < hi_acc[c]) hi_acc[c] = hi;
}

inline int memset_async(void* p, int value, size_t bytes, CUstream_st*) {
  ++emu_launches;
  std::memset(p, value, bytes);
  return 0;
}
inline int copy_to_device_async(void* dst, const void* src, size_t bytes, CUstream_st*) {
  ++emu_launches;
  std::memcpy(dst, src, bytes);
  return 0;
}
inline int last_error() { return 0; }
inline int64_t resident_blocks() { return emu_resident_blocks; }

}  // namespace port
}  // namespace qdq

#define QDQ_LAUNCH(kernel, grid, block, stream, ...) \
  ((void)(stream), ::qdq::port::emu_launch(kernel, grid, block, __VA_ARGS__))
