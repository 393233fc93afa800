"""The documentation's Python examples run, and print what the docs say they print.

Every ```python block in README.md and docs/*.md runs as its own test (blocks of one file
share a namespace, in order); blocks that import torch/cupy or use device="cuda" run only
where PyTorch sees a GPU (skipped with that reason elsewhere). A comment line `# -> <text>`
(docs/) or `# [<numbers>]` (README) right after a line that prints states the expected
output: the numbers it contains must equal the
printed numbers, else the text itself must appear in what was printed. A block whose first
line is `# doc-test: skip` is not run (for examples that need a GPU or a long run).
The package docstrings' `>>>` examples run through doctest.
"""
import contextlib
import doctest
import glob
import io
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)")


def _blocks(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _numbers(text):
    return [float(t) for t in _NUMBER.findall(text)]


def _steps(block):
    """Splits a block into (code, expected-output or None) pieces at each expectation comment."""
    steps, code = [], []
    for line in block.splitlines():
        m = re.match(r"\s*# (?:-> )?(.*)$", line)
        is_expect = m and code and re.match(r"\s*print\(", code[-1] if code[-1].strip() else "") and (
            line.lstrip().startswith("# ->") or line.lstrip().startswith("# ["))
        if is_expect:
            steps.append(("\n".join(code), m.group(1)))
            code = []
        else:
            code.append(line)
    steps.append(("\n".join(code), None))
    return steps


def _same(printed, expected):
    want, got = _numbers(expected), _numbers(printed)
    if want:
        return len(want) == len(got) and all((a == b) or (a != a and b != b) for a, b in zip(want, got))
    return expected.strip() in printed


def _needs_gpu(block):
    return bool(re.search(r"^\s*(import|from)\s+(torch|cupy)\b|device=[\"']cuda", block, flags=re.M))


def _gpu_present():
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


_BLOCKS = [(path, i) for path in DOCS for i in range(len(_blocks(path)))]
_NAMESPACES = {}  # path -> (namespace, number of blocks run so far): later blocks build on earlier ones


def _run_block(path, block):
    namespace = _NAMESPACES[path][0]
    bad = []
    for code, expected in _steps(block):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, path, "exec"), namespace)  # noqa: S102 - the docs' own examples
        if expected is not None and not _same(out.getvalue(), expected):
            bad.append(f"expected {expected!r}, printed {out.getvalue().strip()!r}")
    return bad


@pytest.mark.parametrize("path,index", _BLOCKS, ids=[f"{os.path.relpath(p, ROOT)}#{i}" for p, i in _BLOCKS])
def test_doc_examples_run_and_print_what_they_say(path, index):
    """Each example block of each document (GPU examples run only where PyTorch sees a GPU)."""
    blocks = _blocks(path)
    _NAMESPACES.setdefault(path, ({"__name__": "__doc_example__"}, 0))
    namespace, done = _NAMESPACES[path]
    for earlier in blocks[done:index]:  # blocks this one may build on (when run alone, e.g. with -k)
        if not earlier.lstrip().startswith("# doc-test: skip") and not _needs_gpu(earlier):
            _run_block(path, earlier)
    _NAMESPACES[path] = (namespace, index + 1)
    block = blocks[index]
    if block.lstrip().startswith("# doc-test: skip"):
        pytest.skip("marked '# doc-test: skip'")
    if _needs_gpu(block) and not _gpu_present():
        pytest.skip("GPU example: needs PyTorch with a CUDA GPU")
    bad = _run_block(path, block)
    assert not bad, f"{os.path.relpath(path, ROOT)} block {index}:\n" + "\n".join(bad)


def test_differences_doc_checks_its_outputs():
    """The differences page states outputs; make sure the checker actually sees them."""
    path = os.path.join(ROOT, "docs", "DIFFERENCES.md")
    expectations = [e for b in _blocks(path) for _, e in _steps(b) if e is not None]
    assert len(expectations) >= 6


def test_checker_rejects_a_wrong_output():
    assert _same("[-1. nan 0.296875]", "[-1. nan 0.296875]")
    assert not _same("[-1. nan 0.296875]", "[-1. nan 0.3]")
    assert not _same("<dtype: 'half'>", "<dtype: 'bfloat16'>")


def test_docstring_examples():
    import tensorflow_qdq
    from tensorflow_qdq import _api

    failed = 0
    for module in (tensorflow_qdq, _api):
        failed += doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE).failed
    assert failed == 0
