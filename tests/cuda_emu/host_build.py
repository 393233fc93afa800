"""Compiles the CPU core (cc/qdq_cpu*.cc) for the host-emulation tests, with the
per-file flags setup.py's core_cpu_flags uses (no FMA contraction; AVX2+F16C for
the one unit the core dispatches to at run time)."""
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def core_objects(cxx, out_dir, opt="-O2"):
    objects = []
    for source in sorted((ROOT / "cc").glob("qdq_cpu*.cc")):
        flags = ["-ffp-contract=off", "-fno-trapping-math"]
        if source.name.endswith("_avx2.cc") and platform.machine().lower() in ("x86_64", "amd64"):
            flags += ["-mavx2", "-mf16c"]
        obj = Path(out_dir) / (source.stem + ".o")
        subprocess.run([cxx, "-std=c++17", opt, "-fPIC", "-Wall", "-Wextra", "-Werror", *flags, "-I", str(ROOT),
                        "-c", str(source), "-o", str(obj)], check=True)
        objects.append(str(obj))
    return objects
