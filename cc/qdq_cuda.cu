// CUDA launchers of the core: the kernels of qdq_cuda_kernels.cuh on real CUDA,
// behind the TensorFlow-free API of qdq_cuda.h.
#include "qdq_cuda.h"

#include "qdq_cuda_port.cuh"
// After the port layer:
#include "qdq_cuda_api.cuh"

namespace qdq {

static_assert(cuda_impl::kInvalidValue == static_cast<int>(cudaErrorInvalidValue),
              "the launchers report an argument outside its domain as CUDA does");

int cuda_zero(CudaStream stream, void* ptr, size_t bytes) {
  if (bytes == 0) return 0;
  return static_cast<int>(cudaMemsetAsync(ptr, 0, bytes, stream));
}

const char* cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error for later callers
    return 0;
  }
  return n;
}

}  // namespace qdq
