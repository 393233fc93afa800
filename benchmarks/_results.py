"""What every benchmark shares: the machine it ran on, and the one writer of RESULTS.md, which
replaces only the benchmark's own section (between its begin and end markers)."""

import os
import platform
import re
from pathlib import Path


def machine_info():
    """CPU model and count, TensorFlow's version, the CPU loops in use, the intra-op threads."""
    import tensorflow as tf

    from tensorflow_qdq import _isa

    model = platform.processor() or platform.machine()
    try:
        found = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return {
        "cpu": f"{model}, {os.cpu_count()} logical CPUs",
        "tensorflow": tf.__version__,
        "isa": _isa.current(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
    }


def load_average():
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def write_results(path, section, begin, end):
    """Puts ``section`` (which starts with ``begin`` and ends with ``end``) into the file at
    ``path`` in place of the previous one, or appends it; the other sections stay."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
