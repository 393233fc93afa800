"""The build is described once: sources.bzl holds the source lists and the exactness flags,
setup.py executes it and BUILD loads it. Checks that both builds take their lists from it,
that it lists every translation unit in the tree, and that the flags reach both builds."""

import ast
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import setup_under_test

ROOT = Path(__file__).resolve().parents[1]
LISTS = {}
exec(compile((ROOT / "sources.bzl").read_text(), "sources.bzl", "exec"), {}, LISTS)  # noqa: S102
BUILD = (ROOT / "BUILD").read_text()


def test_sources_bzl_is_plain_assignments_of_string_lists():
    """What both Starlark and Python can read, and nothing else (no logic to drift)."""
    tree = ast.parse((ROOT / "sources.bzl").read_text())
    for node in tree.body:
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.List), ast.dump(node)
        assert all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.value.elts)


def test_every_translation_unit_is_listed_once():
    built = LISTS["CORE_SOURCES"] + LISTS["TF_SOURCES"] + LISTS["TF_GPU_SOURCES"] + LISTS["CUDA_SOURCES"] + \
        LISTS["BINDING_SOURCES"]
    on_disk = sorted(str(p.relative_to(ROOT)) for pattern in ("cc/*.cc", "cc/*.cu", "kernels/*.cc")
                     for p in ROOT.glob(pattern))
    assert sorted(built) == on_disk
    assert set(LISTS["AVX2_SOURCES"]) <= set(LISTS["CORE_SOURCES"])


def test_setup_py_builds_from_the_lists_with_the_flags():
    setup = setup_under_test.module()
    for name in ("CORE_SOURCES", "AVX2_SOURCES", "TF_SOURCES", "TF_GPU_SOURCES", "CUDA_SOURCES", "BINDING_SOURCES",
                 "NVCC_FLAGS", "CORE_FLAGS"):
        assert getattr(setup, name) == LISTS[name], name
    assert [s for s, _ in setup.core_jobs(["c++"])] == LISTS["CORE_SOURCES"]
    for source, command in setup.core_jobs(["c++"]):
        assert all(flag in command for flag in LISTS["CORE_FLAGS"]), source
    command = setup.nvcc_command("nvcc")
    assert all(flag in command for flag in LISTS["NVCC_FLAGS"]) and "--fmad=false" in LISTS["NVCC_FLAGS"]


def test_build_loads_the_lists_and_names_no_source_itself():
    load = re.search(r'load\(\s*":sources.bzl",(.*?)\)', BUILD, re.S)
    assert load, "BUILD must load sources.bzl"
    loaded = set(re.findall(r'"(\w+)"', load.group(1)))
    for name in ("CORE_SOURCES", "AVX2_SOURCES", "AVX2_FLAGS", "CORE_FLAGS", "TF_SOURCES", "TF_GPU_SOURCES",
                 "CUDA_SOURCES", "NVCC_FLAGS"):
        assert name in loaded and re.search(rf"\b{name}\b", BUILD.split(load.group(0), 1)[1]), name
    # Outside the loads, no .cc/.cu file is spelled in BUILD but the baseline unit it splits off.
    spelled = set(re.findall(r'"(cc/[\w.]+\.(?:cc|cu)|kernels/[\w.]+\.cc)"', BUILD))
    assert spelled <= {"cc/qdq_cpu_baseline.cc"}, spelled
    assert "-nvcc_options=" in BUILD  # NVCC_FLAGS through TensorFlow's nvcc wrapper


@pytest.mark.parametrize("opt,defines", [("-O0", ()), ("-O0", ("-DQDQ_AVX2_GENERIC_NARROW",)), ("-O3", ())],
                         ids=["O0", "O0-generic-lanes", "O3"])
def test_the_avx2_unit_exports_nothing_but_its_tables(tmp_path, opt, defines):
    """The AVX2 unit (AVX2_SOURCES, built with AVX2_FLAGS) compiles the shared headers' inline
    functions too. A copy emitted out of line there would be a weak symbol the linker may also
    hand to the portable loops, which would then fault on a CPU without AVX2; QDQ_INLINE
    (cc/qdq_hd.h) keeps every one inlined, at -O0 too, and with the generic lanes a new type
    starts on. So the object defines no external code symbol but qdq::avx2_loops<T>."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("needs an x86-64 C++ compiler")
    (source,) = LISTS["AVX2_SOURCES"]
    obj = tmp_path / "avx2.o"
    subprocess.run([cxx, "-std=c++17", opt, "-fPIC", *LISTS["CORE_FLAGS"], *LISTS["AVX2_FLAGS"], *defines, "-I",
                    str(ROOT), "-c", str(ROOT / source), "-o", str(obj)], check=True)
    symbols = subprocess.run(["nm", "-C", "--defined-only", str(obj)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    code = [s for s in symbols if s.split(" ", 2)[1] in ("T", "W", "i")]  # global, weak, indirect functions
    exported = [s.split(" ", 2)[2] for s in code]
    assert exported and all(re.fullmatch(r".* qdq::avx2_loops<[\w:]+>\(\)", name) for name in exported), exported
