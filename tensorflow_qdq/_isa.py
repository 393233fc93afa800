"""The CPU instruction-set switch, one for the package: the op library's loops and those of the
TensorFlow-free core (``tensorflow_qdq._core``, when built) are chosen together. The environment
variable ``QDQ_CPU_ISA`` (``baseline``, ``avx2``, anything else = the best) sets both when they
load; ``select``/``using`` change them at run time (tests, benchmarks, comparisons).

    from tensorflow_qdq import _isa
    with _isa.using("baseline"):   # the portable loops inside the block
        ...
"""

import contextlib
import ctypes
import functools


@functools.lru_cache(maxsize=None)
def _library():
    """The op library's C hooks: qdq_cpu_isa() and qdq_cpu_set_isa(name) (the loaded handle)."""
    from tensorflow_qdq import _loader

    lib = ctypes.CDLL(str(_loader._LIBRARY))
    lib.qdq_cpu_isa.restype = ctypes.c_char_p
    lib.qdq_cpu_set_isa.restype = ctypes.c_char_p
    lib.qdq_cpu_set_isa.argtypes = [ctypes.c_char_p]
    return lib


def _core():
    try:
        from tensorflow_qdq import _core
    except ImportError:  # not built: nothing else to switch
        return None
    return _core


def current():
    """The op library's loops in use: "avx2" or "baseline"."""
    return _library().qdq_cpu_isa().decode()


def select(name):
    """Uses the loops named ("baseline", "avx2" where the CPU has them, else the best) in the op
    library and the core; returns the op library's choice."""
    chosen = _library().qdq_cpu_set_isa(name.encode()).decode()
    core = _core()
    if core is not None:
        core.set_cpu_isa(name)
    return chosen


@contextlib.contextmanager
def using(name):
    """``select(name)`` inside the block (yields the choice), the previous loops after it."""
    previous = current()
    try:
        yield select(name)
    finally:
        select(previous)
