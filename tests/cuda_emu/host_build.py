"""Builds the host-emulation test programs: the given sources (compiled with g++
against the emulated CUDA port layer) linked with the CPU core, whose units get the
build's per-file flags from sources.bzl (as setup.py and BUILD do: no FMA contraction;
AVX2+F16C for the one unit the core dispatches to at run time)."""
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LISTS = {}
exec(compile((ROOT / "sources.bzl").read_text(), "sources.bzl", "exec"), {}, LISTS)  # noqa: S102


def _core_objects(cxx, out_dir, opt, extra):
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = []
    for source in LISTS["CORE_SOURCES"]:
        flags = list(LISTS["CORE_FLAGS"])
        if source in LISTS["AVX2_SOURCES"] and platform.machine().lower() in ("x86_64", "amd64"):
            flags += LISTS["AVX2_FLAGS"]
        obj = out_dir / (Path(source).stem + ".o")
        objects.append(str(obj))
        if obj.exists():  # built earlier in this session
            continue
        subprocess.run([cxx, "-std=c++17", opt, "-fPIC", "-Wall", "-Wextra", "-Werror", *flags, *extra, "-I", str(ROOT),
                        "-c", str(ROOT / source), "-o", str(obj)], check=True)
    return objects


def build(output, sources, objects_dir, *, opt="-O1", extra=(), sanitize=(), core_defines=()):
    """Compiles and links `sources` (paths relative to the repository) with the CPU core
    (objects kept in `objects_dir` for the session) into `output`; `sanitize` flags (e.g.
    -fsanitize=address,undefined) go to every unit, the core's included, and to the link;
    `core_defines` (-D flags) to the core's units only. Skips the calling test when there is
    no C++ compiler."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA emulation")
    output = Path(output)
    key = "".join([opt.lstrip("-"), "-sanitized" if sanitize else "", *(d.replace("-D", "-") for d in core_defines)])
    core = _core_objects(cxx, Path(objects_dir) / key, opt, (*sanitize, *core_defines))
    cmd = [cxx, "-std=c++17", opt, "-fPIC", "-Wall", "-Wextra", "-Werror", *extra, *sanitize, "-I", str(ROOT),
           *(str(ROOT / s) for s in sources), *core, "-o", str(output)]
    subprocess.run(cmd, check=True)
    return output


def _python_package(tmp):
    """tmp/tensorflow_qdq: a copy of the package's Python files, and stand-ins that hide
    TensorFlow and PyTorch from what runs there."""
    pkg = tmp / "tensorflow_qdq"
    pkg.mkdir()
    for py in (ROOT / "tensorflow_qdq").glob("*.py"):
        shutil.copy(py, pkg / py.name)
    for name in ("tensorflow", "torch"):
        (tmp / f"{name}.py").write_text(f"raise ImportError('{name} is hidden from this host-built core')\n")
    return pkg


def _package(tmp, objects_dir, sources, *, extra=(), **build_args):
    """tmp with the Python package copied (_python_package) and its tensorflow_qdq._core built
    from the binding's `sources` and the core; returns (tmp, the built core)."""
    import sysconfig

    import pybind11

    tmp = Path(tmp)
    pkg = _python_package(tmp)
    includes = ["-shared", "-fvisibility=hidden", "-isystem", pybind11.get_include(), "-isystem",
                sysconfig.get_paths()["include"], "-I", str(ROOT / "cc")]
    core = build(pkg / ("_core" + sysconfig.get_config_var("EXT_SUFFIX")), sources, objects_dir,
                 extra=[*extra, *includes], **build_args)
    return tmp, core


def core_package(tmp, objects_dir, *, core_defines=()):
    """A directory holding a copy of the Python package whose tensorflow_qdq._core (CPU only)
    is built from a core compiled with `core_defines`; returns the directory."""
    return _package(tmp, objects_dir, ["cc/qdq_pybind.cc"], core_defines=core_defines)[0]


def emulated_package(tmp, objects_dir, *, sanitize=()):
    """A directory holding a copy of the Python package whose tensorflow_qdq._core is built
    against the CUDA emulation (emu_api.cc), the GPU test module and its device-buffer bridge,
    and stand-ins that hide TensorFlow and PyTorch; returns (directory, the built core)."""
    tmp, core = _package(tmp, objects_dir, ["cc/qdq_pybind.cc", "tests/cuda_emu/emu_api.cc"],
                         extra=["-DQDQ_WITH_CUDA"], sanitize=sanitize)
    # Copies outside the repository: the repository's conftest would put the real package first.
    shutil.copy(ROOT / "tests" / "test_gpu.py", tmp / "test_gpu.py")
    shutil.copy(ROOT / "tests" / "helpers" / "device_buffers.py", tmp / "device_buffers.py")
    return tmp, core
