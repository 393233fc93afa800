"""setup.py imported as a module: its lists and command builders, without running a build
(setup() runs only when setup.py is the main program, as pip and `python setup.py` run it)."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "setup.py"


def module():
    spec = importlib.util.spec_from_file_location("_qdq_setup_under_test", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
