"""A core built without CUDA and with the AVX2 loops' generic lanes.

The AVX2 loops' generic lanes for a narrow element type (cc/qdq_avx2_lanes.h: eight scalar
conversions through Compute<T>), which a newly added type runs on until it gets a register
conversion: the core is built with QDQ_AVX2_GENERIC_NARROW, so half and bfloat16 take that
path, and every op's AVX2 result must equal the portable loops' bit for bit
(tests/cuda_emu/isa_check.py, the same check the sanitizer run makes of the real lanes).
The same module is the binding as a machine without nvcc builds it (-Wall -Wextra -Werror):
its CUDA entry points raise an error that says so."""
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("pybind11")
sys.path.insert(0, str(ROOT / "tests" / "cuda_emu"))
import host_build  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    tmp = host_build.core_package(tmp_path_factory.mktemp("generic_lanes"),
                                  tmp_path_factory.getbasetemp() / "qdq_core_objects",
                                  core_defines=("-DQDQ_AVX2_GENERIC_NARROW",))
    shutil.copy(ROOT / "tests" / "cuda_emu" / "isa_check.py", tmp / "isa_check.py")
    return tmp


def _python(package, *args):
    return subprocess.run([sys.executable, *args], cwd=package, capture_output=True, text=True, timeout=900,
                          env={"PYTHONPATH": str(package), "PATH": "/usr/bin:/bin"})


def _has_avx2():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return platform.machine().lower() in ("x86_64", "amd64") and " avx2" in flags and " f16c" in flags


@pytest.mark.skipif(not _has_avx2(), reason="the AVX2 loops need an x86-64 CPU with AVX2 and F16C")
def test_generic_narrow_lanes_equal_the_portable_loops(package, tmp_path_factory):
    # The define took effect: the AVX2 object of this build converts half without F16C.
    avx2_object = next((tmp_path_factory.getbasetemp() / "qdq_core_objects").glob("*GENERIC_NARROW/qdq_cpu_avx2.o"))
    code = subprocess.run(["objdump", "-d", str(avx2_object)], capture_output=True, text=True, check=True).stdout
    assert "vcvtph2ps" not in code and "vcvtps2ph" not in code
    result = _python(package, "isa_check.py", "float16", "bfloat16")
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert int(result.stdout.split("isa_check: ")[1].split()[0]) >= 200, result.stdout


def test_a_core_without_cuda_says_so(package):
    script = """
from tensorflow_qdq import _core
assert _core.WITH_CUDA is False and _core.cuda_device_count() == 0
for call in (lambda: _core.quantize_workspace_bytes("float32", [4], -1, False),
             lambda: _core.tracked_workspace_bytes("float16", [4], -1)):
    try:
        call()
    except RuntimeError as e:
        assert "built without CUDA" in str(e), e
    else:
        raise AssertionError("no error")
print("ok")
"""
    result = _python(package, "-c", script)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.stdout + result.stderr)[-6000:]
