"""Shared pytest set-up: the repository root on sys.path (so `tests.*` helpers import the
same way under `pytest` and `python -m pytest`), and a terminal-summary line per batch of
random cases that the conformance tests checked."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests import cases  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    if not cases.CHECKED:
        return
    terminalreporter.section("tensorflow-qdq: cases checked bit for bit")
    total = 0
    for name, count in sorted(cases.CHECKED.items()):
        terminalreporter.write_line(f"{count:8d}  {name}")
        total += count
    terminalreporter.write_line(f"{total:8d}  in all")
