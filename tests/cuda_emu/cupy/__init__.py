"""A stand-in for CuPy over NumPy, for tests/test_gpu_emulated.py only: "device"
arrays are host arrays, and ``data.ptr`` is their host address, which the emulated
build of tensorflow_qdq._core (tests/cuda_emu/emu_api.cc) reads and writes. It
implements just what tests/test_gpu.py and tests/helpers/device_buffers.py use."""
import types

import numpy as _np

uint8 = _np.uint8


class ndarray:  # noqa: N801 - CuPy's name
    def __init__(self, host):
        self._host = host

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self._host.ctypes.data)

    @property
    def flags(self):
        return types.SimpleNamespace(c_contiguous=self._host.flags.c_contiguous)

    dtype = property(lambda self: self._host.dtype)
    shape = property(lambda self: self._host.shape)
    nbytes = property(lambda self: self._host.nbytes)
    size = property(lambda self: self._host.size)

    def view(self, dtype):
        return ndarray(self._host.view(dtype))

    def reshape(self, *shape):
        out = self._host.reshape(*shape)
        assert _np.shares_memory(out, self._host) or out.size == 0, "reshape copied"
        return ndarray(out)

    def __getitem__(self, key):
        return ndarray(self._host[key])

    def set(self, host):
        self._host[...] = host


def full(shape, value, dtype):
    return ndarray(_np.full(shape, value, dtype))


def empty(shape, dtype):
    return ndarray(_np.empty(shape, dtype))


def empty_like(a):
    return ndarray(_np.empty_like(a._host))


def asnumpy(a):
    return a._host.copy()


class _Stream:
    ptr = 0

    def synchronize(self):
        pass


cuda = types.SimpleNamespace(get_current_stream=lambda: _Stream())
