"""CI's AddressSanitizer + UndefinedBehaviorSanitizer run over a fast subset: the
framework-free core and the host emulation of the CUDA kernels (tests/cuda_emu/emu_api.cc)
built with -fsanitize=address,undefined into tensorflow_qdq._core, then, with the sanitizer
runtimes preloaded and every report fatal: the GPU test module on the emulated device (CPU
portable loops and CUDA kernels, every op, dtype and layout, odd sizes and offsets) and the
AVX2-vs-portable check of every CPU op (tests/cuda_emu/isa_check.py). The whole suite and a
longer fuzz run under the instrumented op library stay in scripts/sanitize.sh."""
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pybind11 = pytest.importorskip("pybind11")
sys.path.insert(0, str(ROOT / "tests" / "cuda_emu"))
import host_build  # noqa: E402

SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def _runtime(name):
    cxx = shutil.which("g++") or shutil.which("c++")
    path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    if not Path(path).is_file():
        pytest.fail(f"the C++ compiler has no {name} (install its sanitizer runtimes, e.g. libasan/libubsan)")
    return path


@pytest.fixture(scope="module")
def sanitized_package(tmp_path_factory):
    tmp, core = host_build.emulated_package(tmp_path_factory.mktemp("sanitized"),
                                            tmp_path_factory.getbasetemp() / "qdq_core_objects", sanitize=SANITIZE)
    symbols = subprocess.run(["nm", "-D", str(core)], capture_output=True, text=True, check=True).stdout
    assert "__asan_report" in symbols and "__ubsan_handle" in symbols, "the core is not instrumented"
    shutil.copy(ROOT / "tests" / "cuda_emu" / "isa_check.py", tmp / "isa_check.py")
    env = {
        "PYTHONPATH": f"{tmp}:{ROOT / 'tests' / 'cuda_emu'}", "PATH": "/usr/bin:/bin",
        "LD_PRELOAD": f"{_runtime('libasan.so')} {_runtime('libubsan.so')}",
        # Python and NumPy are not instrumented: no leak checking; every report of ours is fatal.
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_odr_violation=0",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    }
    return tmp, env


def _run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    out = result.stdout + result.stderr
    assert "AddressSanitizer" not in out and "runtime error" not in out, out[-6000:]
    assert result.returncode == 0, out[-6000:]
    return result.stdout


def test_emulated_gpu_module_is_clean_under_asan_and_ubsan(sanitized_package):
    tmp, env = sanitized_package
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", "/dev/null", "-W",
           "ignore::pytest.PytestUnknownMarkWarning", "-m", "gpu", "-k", "not 2pow28", "test_gpu.py"]
    summary = _run(cmd, tmp, env).strip().splitlines()[-1]
    assert "failed" not in summary and int(summary.split(" passed")[0].split()[-1]) >= 211, summary


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="AVX2 loops are x86-64 only")
def test_avx2_loops_equal_the_portable_ones_under_asan_and_ubsan(sanitized_package):
    tmp, env = sanitized_package
    out = _run([sys.executable, "isa_check.py"], tmp, env)
    assert int(out.split("isa_check: ")[1].split()[0]) >= 400, out
