"""The CUDA kernels' logic, run on this host: tests/cuda_emu/emu_check.cc compiles
cc/qdq_cuda_kernels.cuh against a sequential emulation of the CUDA port layer and
compares every output bit with the CPU path on random cases (all dtypes, both
reduction paths, per-tensor/per-channel, auto/given, both rounding modes, V4Grad,
unaligned offsets, in place, NaN/inf/zero channels, poisoned outputs). Needs g++,
not CUDA and not TensorFlow. The warp-level merge, which the sequential emulation
replaces, runs as written in tests/cuda_emu/warp_check.cc (32 threads in lock step)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cuda_emu"))
import host_build  # noqa: E402


@pytest.fixture(scope="module")
def emu_binary(tmp_path_factory):
    return host_build.build(tmp_path_factory.mktemp("cuda_emu") / "emu_check", ["tests/cuda_emu/emu_check.cc"],
                            tmp_path_factory.getbasetemp() / "qdq_core_objects")


# The reference is the CPU core's portable loops: the shared scalar math of cc/qdq_math.h,
# which the kernels must follow (tests/test_cpu_exactness.py ties the AVX2 loops to them).
REFERENCE_ENV = dict(os.environ, QDQ_CPU_ISA="baseline")


def test_emulated_kernels_match_cpu_bit_for_bit(emu_binary):
    result = subprocess.run([str(emu_binary), "600"], capture_output=True, text=True, timeout=300,
                            env=REFERENCE_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "OK 2400"


def test_wide_index_path_matches_cpu(tmp_path_factory):
    """The 64-bit channel arithmetic used beyond 2^32 elements, forced on small tensors."""
    binary = host_build.build(tmp_path_factory.mktemp("cuda_emu_wide") / "emu_check",
                              ["tests/cuda_emu/emu_check.cc"], tmp_path_factory.getbasetemp() / "qdq_core_objects",
                              extra=["-DQDQ_CUDA_FAST_INDEX_LIMIT=0"])
    result = subprocess.run([str(binary), "150"], capture_output=True, text=True, timeout=300, env=REFERENCE_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "OK 600"


def test_warp_merge_in_lock_step(tmp_path_factory):
    """The warp-level merge (cc/qdq_cuda_warp.cuh: __shfl_sync, __shfl_xor_sync, __all_sync,
    __match_any_sync), which the sequential emulation replaces, run as written with 32 host
    threads as the lanes of one warp: one channel (the tree), peer groups, lanes without keys,
    32- and 64-bit keys, against a per-channel min."""
    binary = host_build.build(tmp_path_factory.mktemp("warp") / "warp_check", ["tests/cuda_emu/warp_check.cc"],
                              tmp_path_factory.getbasetemp() / "qdq_core_objects", extra=["-pthread"])
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "warp_check: 120 cases, 0 failures"
