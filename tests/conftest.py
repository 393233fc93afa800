"""Shared pytest set-up: the repository root on sys.path (so the `tests.helpers.*` modules
import the same way under `pytest` and `python -m pytest`), and a terminal-summary line per
batch of random cases that the conformance tests checked."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_terminal_summary(terminalreporter):
    cases = sys.modules.get("tests.helpers.cases")  # counts only where a test used the generator
    if cases is None or not cases.CHECKED:
        return
    terminalreporter.section("tensorflow-qdq: cases checked bit for bit")
    total = 0
    for name, count in sorted(cases.CHECKED.items()):
        terminalreporter.write_line(f"{count:8d}  {name}")
        total += count
    terminalreporter.write_line(f"{total:8d}  in all")


_QAT_DEMO = os.path.join(ROOT, "examples", "qat_digits.py")


@pytest.fixture(scope="session")
def qat_demo():
    """The README's main job (examples/qat_digits.py) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("qat_digits", _QAT_DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def short_qat(qat_demo):
    """The demo's pipeline, shorter (agreement of exports is under test, not accuracy):
    (data, {row name: test accuracy}, {bits: QAT model})."""
    data = qat_demo.digits(seed=0)
    rows, quantized, _ = qat_demo.run_qat(data, epochs=8, qat_epochs=2, bits=(8, 4), seed=0, verbose=0)
    return data, {name: accuracy for name, accuracy, _ in rows}, quantized
