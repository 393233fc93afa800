"""Builds the host-emulation test programs: the given sources (compiled with g++
against the emulated CUDA port layer) linked with the CPU core (cc/qdq_cpu*.cc),
whose units get setup.py's per-file flags (no FMA contraction; AVX2+F16C for the
one unit the core dispatches to at run time)."""
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _core_objects(cxx, out_dir, opt):
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = []
    for source in sorted((ROOT / "cc").glob("qdq_cpu*.cc")):
        flags = ["-ffp-contract=off", "-fno-trapping-math"]
        if source.name.endswith("_avx2.cc") and platform.machine().lower() in ("x86_64", "amd64"):
            flags += ["-mavx2", "-mf16c"]
        obj = out_dir / (source.stem + ".o")
        objects.append(str(obj))
        if obj.exists():  # built earlier in this session
            continue
        subprocess.run([cxx, "-std=c++17", opt, "-fPIC", "-Wall", "-Wextra", "-Werror", *flags, "-I", str(ROOT),
                        "-c", str(source), "-o", str(obj)], check=True)
    return objects


def build(output, sources, objects_dir, *, opt="-O1", extra=()):
    """Compiles and links `sources` (paths relative to the repository) with the CPU core
    (objects kept in `objects_dir` for the session) into `output`; skips the calling test
    when there is no C++ compiler."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA emulation")
    output = Path(output)
    core = _core_objects(cxx, Path(objects_dir) / opt.lstrip("-"), opt)
    cmd = [cxx, "-std=c++17", opt, "-fPIC", "-Wall", "-Wextra", "-Werror", *extra, "-I", str(ROOT),
           *(str(ROOT / s) for s in sources), *core, "-o", str(output)]
    subprocess.run(cmd, check=True)
    return output
