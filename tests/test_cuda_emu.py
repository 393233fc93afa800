"""The CUDA kernels' logic, run on this host: tests/cuda_emu/emu_check.cc compiles
cc/qdq_cuda_kernels.cuh against a sequential emulation of the CUDA port layer and
compares every output bit with the CPU path on random cases (all dtypes, both
reduction paths, per-tensor/per-channel, auto/given, both rounding modes, V4Grad,
unaligned offsets, in place, NaN/inf/zero channels, poisoned outputs). Needs g++,
not CUDA and not TensorFlow."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def emu_binary(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA emulation")
    out = tmp_path_factory.mktemp("cuda_emu") / "emu_check"
    cmd = [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(ROOT),
           str(ROOT / "tests/cuda_emu/emu_check.cc"), str(ROOT / "cc/qdq_cpu.cc"), "-o", str(out)]
    subprocess.run(cmd, check=True)
    return out


def test_emulated_kernels_match_cpu_bit_for_bit(emu_binary):
    result = subprocess.run([str(emu_binary), "600"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "OK 2400"
