"""``python -m tensorflow_qdq.bench [--quick|--tiny] [--out DIR]``: the CPU benchmark.

Runs tensorflow-qdq's CPU kernels and TensorFlow's built-ins side by side and
prints a table (median time, GB/s, speedup, % of copy bandwidth); with --out it
also writes DIR/RESULTS.md (its CPU section) and DIR/cpu.png.
"""
from tensorflow_qdq._benchmark import main

if __name__ == "__main__":
    main()
