"""CPU benchmark of tensorflow-qdq against TensorFlow's built-ins.

    python benchmarks/cpu.py            # full run (< 10 min): writes benchmarks/RESULTS.md, benchmarks/cpu.png
    python benchmarks/cpu.py --quick    # under a minute
    python benchmarks/cpu.py --out DIR  # write elsewhere

Same as ``python -m tensorflow_qdq.bench --out benchmarks``; see tensorflow_qdq/_benchmark.py.
"""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a source checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tensorflow_qdq._benchmark import main  # noqa: E402

if __name__ == "__main__":
    main(default_out=HERE)
