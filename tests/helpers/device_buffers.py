"""Runs the CUDA launchers of ``tensorflow_qdq._core`` on PyTorch tensors or CuPy
arrays that live on a GPU: no TensorFlow needed. Tooling of tests/test_gpu.py and
benchmarks/gpu.py (not part of the installed package); also an example of using the
kernels from other frameworks. Imported as a plain module (``import device_buffers``): the
emulated GPU run copies it next to tests/test_gpu.py, outside the repository.

    import torch
    import device_buffers as db   # with tests/helpers/ on sys.path
    x = torch.randn(1 << 20, device="cuda")
    y = db.quantize(x, num_bits=8)                       # auto range, per tensor
    y = db.quantize(x.view(256, -1), -1.0, 1.0, range_given=True, axis=0)

Calls are asynchronous on the array's current stream (or ``stream=``, an int
``cudaStream_t``); ranges are host values (scalars, lists or NumPy arrays).
"""

import numpy as np

from tensorflow_qdq import _core
from tensorflow_qdq._contract import DTYPES, dtypes_text


def _numpy_dtype(name):
    """The NumPy type of one of the contract's element types (bfloat16 from ml_dtypes)."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be {dtypes_text()}, got {name}")
    if name == "bfloat16":
        import ml_dtypes  # NumPy's bfloat16

        return ml_dtypes.bfloat16
    return np.dtype(name).type


class _Buffer:
    """Pointer, shape, dtype name and framework of a contiguous device array."""

    def __init__(self, array, name):
        self.array = array
        module = type(array).__module__
        if module.startswith("torch"):
            if not array.is_cuda:
                raise ValueError(f"{name} must be a CUDA tensor")
            if not array.is_contiguous():
                raise ValueError(f"{name} must be contiguous")
            self.kind = "torch"
            self.ptr = array.data_ptr()
            self.shape = list(array.shape)
            self.dtype = str(array.dtype).replace("torch.", "")
        elif module.startswith("cupy"):
            if not array.flags.c_contiguous:
                raise ValueError(f"{name} must be C-contiguous")
            self.kind = "cupy"
            self.ptr = array.data.ptr
            self.shape = list(array.shape)
            self.dtype = array.dtype.name
        else:
            raise TypeError(f"{name} must be a torch.Tensor on a GPU or a cupy.ndarray, got {type(array).__name__}")

    def stream(self):
        if self.kind == "torch":
            import torch

            return torch.cuda.current_stream(self.array.device).cuda_stream
        import cupy

        return cupy.cuda.get_current_stream().ptr

    def empty_like(self):
        if self.kind == "torch":
            import torch

            return torch.empty_like(self.array)
        import cupy

        return cupy.empty_like(self.array)

    def empty(self, n, dtype=None):
        """A device vector of n elements of this array's dtype (or of the dtype named)."""
        if self.kind == "torch":
            import torch

            kind = self.array.dtype if dtype is None else getattr(torch, dtype)
            return torch.empty(n, dtype=kind, device=self.array.device)
        import cupy

        return cupy.empty(n, dtype=self.array.dtype if dtype is None else dtype)

    def bytes(self, n):
        """A device byte buffer of n bytes (16-byte aligned, as both allocators give)."""
        if self.kind == "torch":
            import torch

            return torch.empty(max(n, 1), dtype=torch.uint8, device=self.array.device)
        import cupy

        return cupy.empty(max(n, 1), dtype=cupy.uint8)


def _ptr(array):
    return _Buffer(array, "buffer").ptr


def _host_range(value, dtype, depth):
    """Host range values as a contiguous vector of x's dtype (one value per channel);
    a scalar is broadcast. None (auto ranges ignore the values) gives zeros."""
    target = _numpy_dtype(dtype)
    values = np.zeros(depth, target) if value is None else np.asarray(value)
    if values.dtype != target:
        values = values.astype(np.float64).astype(target)
    return np.ascontiguousarray(np.broadcast_to(values, (depth,)) if values.ndim == 0 else values.reshape(-1))


def workspace_bytes(x, *, axis=-1, range_given=False, gradient=False):
    """Device scratch a call on x needs (pass a buffer this big as ``workspace=`` to skip allocation)."""
    b = _Buffer(x, "input")
    if gradient:
        return _core.gradient_workspace_bytes(b.dtype, b.shape, axis)
    return _core.quantize_workspace_bytes(b.dtype, b.shape, axis, range_given)


def quantize(x, input_min=None, input_max=None, *, signed_input=True, num_bits=8, range_given=False,
             round_mode="HALF_TO_EVEN", narrow_range=False, axis=-1, out=None, workspace=None, stream=None):
    """QuantizeAndDequantizeV2/V4 forward on the GPU (raw-op axis: -1 = per-tensor).
    ``out`` may be x itself (in place). Returns out."""
    b = _Buffer(x, "input")
    depth = 1 if axis == -1 or not b.shape else b.shape[axis]
    out = b.empty_like() if out is None else out
    o = _Buffer(out, "out")
    if o.shape != b.shape or o.dtype != b.dtype:
        raise ValueError("out must have the shape and dtype of input")
    need = _core.quantize_workspace_bytes(b.dtype, b.shape, axis, range_given)
    ws = b.bytes(need) if workspace is None else workspace
    ws_ptr, ws_len = (_ptr(ws), _nbytes(ws)) if need else (0, 0)
    _core.quantize_cuda(b.dtype, b.ptr, o.ptr, b.shape, _host_range(input_min, b.dtype, depth),
                        _host_range(input_max, b.dtype, depth), signed_input, num_bits, range_given,
                        round_mode, narrow_range, axis, ws_ptr, ws_len, b.stream() if stream is None else stream)
    return out


def _gradient_buffers(gradients, x, out, axis):
    """The buffers of a gradient op, checked to share one shape and dtype: (gradients, input,
    out array, out buffer, slices along axis); out is allocated when None."""
    g = _Buffer(gradients, "gradients")
    b = _Buffer(x, "input")
    depth = 1 if axis == -1 or not b.shape else b.shape[axis]
    out = b.empty_like() if out is None else out
    o = _Buffer(out, "out")
    if g.shape != b.shape or o.shape != b.shape or g.dtype != b.dtype or o.dtype != b.dtype:
        raise ValueError("gradients, input and out must have one shape and dtype")
    return g, b, out, o, depth


def masked_gradient(gradients, x, input_min, input_max, *, axis=-1, out=None, workspace=None, stream=None):
    """QuantizeAndDequantizeV4Grad's input_backprop on the GPU. Returns out."""
    g, b, out, o, depth = _gradient_buffers(gradients, x, out, axis)
    need = _core.gradient_workspace_bytes(b.dtype, b.shape, axis)
    ws = b.bytes(need) if workspace is None else workspace
    ws_ptr, ws_len = (_ptr(ws), _nbytes(ws)) if need else (0, 0)
    _core.masked_gradient_cuda(b.dtype, g.ptr, b.ptr, o.ptr, b.shape,
                               _host_range(input_min, b.dtype, depth),
                               _host_range(input_max, b.dtype, depth), axis, ws_ptr, ws_len,
                               b.stream() if stream is None else stream)
    return out


def lsq_gradient(gradients, x, input_min, input_max, *, signed_input=True, num_bits=8, round_mode="HALF_TO_EVEN",
                 narrow_range=False, axis=-1, out=None, step_out=None, stream=None):
    """QuantizeAndDequantizeLsqGrad on the GPU: returns (out, step_out), step_out holding one
    value per channel (a 1-element vector per tensor)."""
    g, b, out, o, depth = _gradient_buffers(gradients, x, out, axis)
    step_out = b.empty(depth) if step_out is None else step_out
    st = _Buffer(step_out, "step_out")
    if st.dtype != b.dtype or int(np.prod(st.shape)) != depth:
        raise ValueError(f"step_out must hold {depth} value(s) of the dtype of input")
    need = _core.lsq_gradient_workspace_bytes(b.dtype, b.shape, axis)
    ws = b.bytes(need)
    ws_ptr, ws_len = (_ptr(ws), _nbytes(ws)) if need else (0, 0)
    _core.lsq_gradient_cuda(b.dtype, g.ptr, b.ptr, o.ptr, st.ptr, b.shape,
                            _host_range(input_min, b.dtype, depth), _host_range(input_max, b.dtype, depth),
                            signed_input, num_bits, round_mode, narrow_range, axis, ws_ptr, ws_len,
                            b.stream() if stream is None else stream)
    return out, step_out


def tracked_quantize(x, tracked_min, tracked_max, tracked_updates, *, momentum, delayed=False, signed_input=True,
                     num_bits=8, round_mode="HALF_TO_EVEN", narrow_range=False, axis=-1, out=None, stream=None):
    """QuantizeAndDequantizeTracked on the GPU: a tracked quantizer's training step. The state
    (tracked_min/max: float32, tracked_updates: int64, one value per channel) is on the device;
    returns (out, new_min, new_max, new_updates, used_min, used_max), all device arrays."""
    b = _Buffer(x, "input")
    depth = 1 if axis == -1 or not b.shape else b.shape[axis]
    state = [_Buffer(a, n) for a, n in ((tracked_min, "tracked_min"), (tracked_max, "tracked_max"),
                                        (tracked_updates, "tracked_updates"))]
    for buf, dtype in zip(state, ("float32", "float32", "int64")):
        if buf.dtype != dtype or int(np.prod(buf.shape)) != depth:
            raise ValueError(f"the tracked state must hold {depth} value(s) of {dtype} each, got {buf.dtype} "
                             f"of shape {buf.shape}")
    out = b.empty_like() if out is None else out
    o = _Buffer(out, "out")
    if o.shape != b.shape or o.dtype != b.dtype:
        raise ValueError("out must have the shape and dtype of input")
    results = [b.empty(depth, d) for d in ("float32", "float32", "int64", "float32", "float32")]
    need = _core.tracked_workspace_bytes(b.dtype, b.shape, axis)
    ws = b.bytes(need)
    ws_ptr, ws_len = (_ptr(ws), _nbytes(ws)) if need else (0, 0)
    _core.tracked_quantize_cuda(b.dtype, b.ptr, o.ptr, b.shape, *(s.ptr for s in state), momentum, delayed,
                                signed_input, num_bits, round_mode, narrow_range, axis, *map(_ptr, results),
                                ws_ptr, ws_len, b.stream() if stream is None else stream)
    return (out, *results)


def _nbytes(array):
    return int(array.nbytes) if hasattr(array, "nbytes") else array.numel() * array.element_size()


def available():
    """(True, "") when the core was built with CUDA and a GPU is visible; else (False, why)."""
    if not _core.WITH_CUDA:
        return False, "tensorflow_qdq._core was built without CUDA (no nvcc at build time)"
    if _core.cuda_device_count() == 0:
        return False, "no CUDA GPU visible"
    return True, ""
