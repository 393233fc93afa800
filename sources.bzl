# The build described once: source lists and exactness flags, read by BUILD (Bazel `load`)
# and by setup.py (executed as Python: only plain assignments of lists of strings here).
# tests/test_build_files.py checks that both builds take everything from this file.

# Framework-free CPU core (no TensorFlow headers); AVX2_SOURCES are compiled with AVX2 + F16C.
CORE_SOURCES = ["cc/qdq_cpu.cc", "cc/qdq_cpu_baseline.cc", "cc/qdq_cpu_avx2.cc", "cc/qdq_cpu_lsq.cc"]
AVX2_SOURCES = ["cc/qdq_cpu_avx2.cc"]
AVX2_FLAGS = ["-mavx2", "-mf16c"]

# Host arithmetic exactly as written: no FMA contraction, no trap-driven reordering.
CORE_FLAGS = ["-ffp-contract=off", "-fno-trapping-math"]

# TensorFlow glue: op registrations and the CPU kernels; the GPU registrations.
TF_SOURCES = ["kernels/qdq_ops.cc", "kernels/qdq_kernels_cpu.cc"]
TF_GPU_SOURCES = ["kernels/qdq_kernels_gpu.cc"]

# CUDA kernels (TensorFlow-free) and nvcc's exactness flag, on top of the _rn intrinsics of
# cc/qdq_math.h: nothing may contract a multiply-add, or the device would round differently
# from the CPU.
CUDA_SOURCES = ["cc/qdq_cuda.cu"]
NVCC_FLAGS = ["--fmad=false"]

# The TensorFlow-free Python binding (tensorflow_qdq._core).
BINDING_SOURCES = ["cc/qdq_pybind.cc"]
