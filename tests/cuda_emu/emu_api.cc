// The API of cc/qdq_cuda.h over the host emulation: "device" pointers are host
// pointers and streams are ignored. Linked into an emulated build of
// tensorflow_qdq._core so the GPU tests (tests/test_gpu.py), the device-buffer
// bridge and the binding's CUDA entry points run on a CPU
// (tests/test_gpu_emulated.py, with tests/cuda_emu/cupy/ as the array library).
#include <cstring>

#include "tests/cuda_emu/cuda_emu.h"
// After the emulation layer:
#include "cc/qdq_cuda_api.cuh"

namespace qdq {

int cuda_zero(CudaStream, void* ptr, size_t bytes) {
  std::memset(ptr, 0, bytes);
  return 0;
}

const char* cuda_error_string(int) { return "emulated CUDA error"; }

int cuda_device_count() { return 1; }

}  // namespace qdq
