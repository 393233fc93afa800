"""The code's habits, checked with the tests (so in CI): ruff over the Python (pyproject.toml's
[tool.ruff]) and clang-format over the C++ (.clang-format). Both tools are pinned in
requirements-dev.txt, which scripts/setup_env.sh installs; a missing tool fails, it is not skipped."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = sorted(str(p.relative_to(ROOT)) for pattern in ("cc/*.cc", "cc/*.h", "cc/*.cuh", "cc/*.cu", "kernels/*.cc",
                                                      "kernels/*.h", "tests/cuda_emu/*.cc", "tests/cuda_emu/*.h")
             for p in ROOT.glob(pattern))


def _tool(name):
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -r requirements-dev.txt (scripts/setup_env.sh does)")
    return path


def test_python_passes_ruff():
    result = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_cxx_is_clang_formatted():
    assert len(CXX) >= 20  # the files this test guards are really found
    result = subprocess.run([_tool("clang-format"), "--dry-run", "--Werror", *CXX], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, "run: clang-format -i " + " ".join(CXX) + "\n" + result.stderr[-4000:]
