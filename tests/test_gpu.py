"""GPU kernels (through tensorflow_qdq._core and PyTorch or CuPy buffers, no
TensorFlow needed) against the CPU kernels, bit for bit: every op (forward in both
rounding modes, auto and given, signed/unsigned/narrow; V4Grad), every dtype,
per-tensor and per-channel on first/middle/last axes, sizes 0, 1, ... 2^28, odd
sizes, unaligned offsets, in place, poisoned outputs (every element must be
written), NaN/inf/zero/all-NaN channels. Inputs are denormal-free (SEMANTICS §3.8).

Run on a GPU machine:  python -m pytest -m gpu -ra tests/test_gpu.py
(-m gpu also selects the 2^28-element cases). Skipped, with the reason, elsewhere.
"""
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

try:
    from tensorflow_qdq import _core
except ImportError as exc:  # not built
    _core, _REASON = None, (f"tensorflow_qdq._core is not built ({exc}); "
                            "run QDQ_CORE_ONLY=1 python setup.py build_ext --inplace")
else:
    _REASON = None if _core.WITH_CUDA else "tensorflow_qdq._core was built without CUDA (no nvcc at build time)"

torch = cupy = None
if _REASON is None:
    if _core.cuda_device_count() == 0:
        _REASON = "no CUDA GPU visible"
    else:
        try:
            import torch

            if not torch.cuda.is_available():
                torch = None
        except ImportError:
            torch = None
        if torch is None:
            try:
                import cupy
            except ImportError:
                _REASON = "needs PyTorch (with CUDA) or CuPy to hold device buffers"

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]

if _REASON is None:
    # The device-buffer bridge (tests/helpers/device_buffers.py; next to this file in the emulated run).
    sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
    import device_buffers as db

try:
    import ml_dtypes

    _BF16 = ml_dtypes.bfloat16
except ImportError:
    _BF16 = None

DTYPES = ["float32", "float64", "float16", "bfloat16"]


@pytest.fixture(autouse=True, scope="module")
def portable_cpu_reference():
    """The reference is the CPU core's portable loops, which are cc/qdq_math.h's scalar
    functions as written (the kernels use the same ones); the SIMD loops must equal
    them and have their own tests."""
    before = _core.cpu_isa()
    _core.set_cpu_isa("baseline")
    yield
    _core.set_cpu_isa(before)
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
POISON = 0xFF  # every byte: a NaN pattern in every dtype


def np_dtype(name):
    if name == "bfloat16":
        if _BF16 is None:
            pytest.skip("bfloat16 needs ml_dtypes")
        return _BF16
    return np.dtype(name).type


def device_buffer(n, dtype, offset, fill=None):
    """A contiguous device vector of n elements starting `offset` elements into a
    fresh allocation (so its address is misaligned for offset % (16/itemsize) != 0)."""
    itemsize = np.dtype(np_dtype(dtype)).itemsize
    raw_len = (n + offset + 8) * itemsize
    if torch is not None:
        raw = torch.full((raw_len,), POISON if fill is None else fill, dtype=torch.uint8, device="cuda")
        tdt = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
               "bfloat16": torch.bfloat16}[dtype]
        return raw.view(tdt)[offset:offset + n]
    if dtype == "bfloat16":
        pytest.skip("CuPy has no bfloat16")
    raw = cupy.full((raw_len,), POISON if fill is None else fill, dtype=cupy.uint8)
    return raw.view(np.dtype(dtype))[offset:offset + n]


def upload(host, offset):
    host = np.ascontiguousarray(host)
    dtype = {np.dtype(_BF16) if _BF16 else None: "bfloat16"}.get(host.dtype, host.dtype.name)
    dev = device_buffer(host.size, dtype, offset)
    bits = host.reshape(-1).view(UINT[host.dtype.itemsize])
    if torch is not None:
        signed = {2: torch.int16, 4: torch.int32, 8: torch.int64}[host.dtype.itemsize]
        bits_signed = bits.view({2: np.int16, 4: np.int32, 8: np.int64}[host.dtype.itemsize])
        dev.view(signed).copy_(torch.from_numpy(bits_signed))
    else:
        dev.view(bits.dtype).set(bits)
    return dev.view(*host.shape) if torch is not None else dev.reshape(host.shape)


def download(dev, dtype):
    size = np.dtype(np_dtype(dtype)).itemsize
    if torch is not None:
        signed = {2: torch.int16, 4: torch.int32, 8: torch.int64}[size]
        torch.cuda.synchronize()
        return dev.contiguous().view(signed).cpu().numpy().view(np_dtype(dtype))
    cupy.cuda.get_current_stream().synchronize()
    return cupy.asnumpy(dev).view(np_dtype(dtype))


def bits(a):
    return np.ascontiguousarray(a).view(UINT[a.dtype.itemsize])


def random_input(rng, dtype, shape, special=0, unsigned=False):
    scale = 10.0 ** rng.integers(-3, 4)
    x = np.asarray(rng.standard_normal(shape) * scale)
    if unsigned:
        x = np.abs(x)
    if x.size and special == 1:
        x.reshape(-1)[rng.integers(0, x.size, size=max(1, x.size // 7))] = np.nan
    if x.size and special == 2:
        x.reshape(-1)[rng.integers(0, x.size)] = np.inf
    return x.astype(np_dtype(dtype))


def random_range(rng, dtype, depth, unsigned):
    a, b = rng.standard_normal(depth) * 3, rng.standard_normal(depth) * 3
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if unsigned:
        lo, hi = np.zeros(depth), np.abs(hi)
    return lo.astype(np_dtype(dtype)), hi.astype(np_dtype(dtype))


def check_quantize(x, axis, lo, hi, attrs, in_off=0, out_off=0, in_place=False):
    dtype = "bfloat16" if _BF16 is not None and x.dtype == np.dtype(_BF16) else x.dtype.name
    want = _core.quantize(x, lo, hi, axis=axis, **attrs)
    dx = upload(x, in_off)
    out = dx if in_place else device_buffer(x.size, dtype, out_off)
    out = out.view(*x.shape) if torch is not None else out.reshape(x.shape)
    db.quantize(dx, lo, hi, axis=axis, out=out, **attrs)
    got = download(out, dtype).reshape(x.shape)
    np.testing.assert_array_equal(bits(got), bits(want), err_msg=f"shape={x.shape} axis={axis} {attrs}")


def check_gradient(g, x, axis, lo, hi, off=0):
    dtype = "bfloat16" if _BF16 is not None and x.dtype == np.dtype(_BF16) else x.dtype.name
    want = _core.masked_gradient(g, x, lo, hi, axis=axis)
    out = device_buffer(x.size, dtype, off)
    out = out.view(*x.shape) if torch is not None else out.reshape(x.shape)
    db.masked_gradient(upload(g, (off + 1) % 8), upload(x, off), lo, hi, axis=axis, out=out)
    np.testing.assert_array_equal(bits(download(out, dtype).reshape(x.shape)), bits(want))


LAYOUTS = [  # shape, axis: per-tensor, first, middle and last axes; both reduction paths
    ((1000,), -1), ((70001,), -1), ((3, 4099), -1), ((5, 3000), 0), ((3, 65536), 0), ((4, 6, 333), 1),
    ((2, 3, 4100), 1), ((1001, 3), 1), ((257, 300), 1), ((64, 2048), 1), ((2, 700, 3), 1), ((1, 7), 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_forward_bit_identical_to_cpu(dtype, shape, axis):
    rng = np.random.default_rng(zlib.crc32(repr((dtype, shape, axis)).encode()))
    for trial in range(8):
        unsigned = trial % 4 == 3
        attrs = dict(signed_input=not unsigned, num_bits=int(rng.choice([1, 2, 4, 8, 8, 13, 16, 23, 32, 61])),
                     range_given=bool(trial % 2), round_mode=["HALF_TO_EVEN", "HALF_UP"][(trial // 2) % 2],
                     narrow_range=bool(trial % 3 == 0))
        depth = 1 if axis == -1 else shape[axis]
        x = random_input(rng, dtype, shape, special=trial % 3, unsigned=unsigned)
        lo, hi = random_range(rng, dtype, depth, unsigned)
        check_quantize(x, axis, lo, hi, attrs, in_off=trial % 5, out_off=(trial * 3) % 8, in_place=trial == 5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_gradient_bit_identical_to_cpu(dtype, shape, axis):
    rng = np.random.default_rng(7)
    depth = 1 if axis == -1 else shape[axis]
    x = random_input(rng, dtype, shape, special=1)
    g = random_input(rng, dtype, shape)
    lo, hi = random_range(rng, dtype, depth, False)
    for off in (0, 1, 3):
        check_gradient(g, x, axis, lo, hi, off)


SIZES = [0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, 255, 256, 257, 2047, 2048, 2049, 4095, 4097, 65537,
         (1 << 20) + 1, (1 << 22) - 3]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_sizes(dtype, n):
    rng = np.random.default_rng(n)
    x = random_input(rng, dtype, (n,))
    lo, hi = random_range(rng, dtype, 1, False)
    for given in (False, True):
        check_quantize(x, -1, lo, hi, dict(range_given=given, num_bits=8), in_off=n % 3, out_off=n % 2)
    if n % 3 == 0 and n:
        check_quantize(x.reshape(3, -1), 0, *random_range(rng, dtype, 3, False), dict(range_given=False))
        check_quantize(x.reshape(-1, 3), 1, *random_range(rng, dtype, 3, False), dict(range_given=True))


def test_zero_and_all_nan_channels():
    x = np.random.default_rng(1).standard_normal((4, 5000)).astype(np.float32)
    x[1] = 0.0
    x[2] = np.nan
    x[3, ::2] = -0.0
    for axis in (0,):
        lo, hi = random_range(np.random.default_rng(2), "float32", 4, False)
        for narrow in (False, True):
            check_quantize(x, axis, lo, hi, dict(range_given=False, narrow_range=narrow))
            check_quantize(x.T.copy(), 1, lo, hi, dict(range_given=False, narrow_range=narrow))


def check_lsq_gradient(g, x, axis, lo, hi, attrs, off=0):
    """Learned-range gradient: the input gradient bit for bit; the step gradient to the
    rounding of the dtype plus a float64 summation-order error (atomics add in any order)."""
    dtype = "bfloat16" if _BF16 is not None and x.dtype == np.dtype(_BF16) else x.dtype.name
    want, want_step = _core.lsq_gradient(g, x, lo, hi, axis=axis, **attrs)
    out = device_buffer(x.size, dtype, off)
    out = out.view(*x.shape) if torch is not None else out.reshape(x.shape)
    _, step = db.lsq_gradient(upload(g, (off + 1) % 8), upload(x, off), lo, hi, axis=axis, out=out, **attrs)
    np.testing.assert_array_equal(bits(download(out, dtype).reshape(x.shape)), bits(want))
    got_step = download(step, dtype).reshape(-1).astype(np.float64)
    want_step = np.asarray(want_step).reshape(-1).astype(np.float64)
    depth = want_step.size
    qmin = -(1 << (attrs["num_bits"] - 1)) if attrs["signed_input"] else 0
    qmax = (1 << (attrs["num_bits"] - (1 if attrs["signed_input"] else 0))) - 1
    shape = x.shape
    outer = int(np.prod(shape[:axis])) if axis != -1 else 1
    g3 = np.abs(g.astype(np.float64)).reshape(outer, depth, -1)
    n = g3.shape[0] * g3.shape[2]
    bound = g3.sum(axis=(0, 2)) * max(-qmin, qmax, 1) / np.sqrt(max(n, 1) * max(qmax, 1))
    eps = float(np.finfo(np_dtype(dtype)).eps) if dtype != "float64" else 0.0
    tol = eps * np.abs(want_step) + 1e-12 * bound + 1e-300
    assert np.all(np.abs(got_step - want_step) <= tol), (got_step, want_step)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_lsq_gradient_matches_cpu(dtype, shape, axis):
    rng = np.random.default_rng(zlib.crc32(repr(("lsq", dtype, shape, axis)).encode()))
    depth = 1 if axis == -1 else shape[axis]
    for trial in range(4):
        unsigned = trial == 3
        attrs = dict(signed_input=not unsigned, num_bits=int(rng.choice([1, 2, 3, 4, 8])),
                     round_mode=["HALF_TO_EVEN", "HALF_UP"][trial % 2], narrow_range=trial == 1)
        x = random_input(rng, dtype, shape, special=trial % 2, unsigned=unsigned)
        g = random_input(rng, dtype, shape)
        lo, hi = random_range(rng, dtype, depth, unsigned)
        check_lsq_gradient(g, x, axis, lo, hi, attrs, off=trial)


def upload_vector(host):
    """A float32 or int64 host vector on the device (the tracked state's dtypes)."""
    host = np.ascontiguousarray(host)
    if torch is not None:
        return torch.from_numpy(host.copy()).cuda()
    dev = cupy.empty(host.shape, host.dtype)
    dev.set(host)
    return dev


def download_vector(dev):
    if torch is not None:
        torch.cuda.synchronize()
        return dev.cpu().numpy()
    cupy.cuda.get_current_stream().synchronize()
    return cupy.asnumpy(dev)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_tracked_step_matches_cpu(dtype, shape, axis):
    """Qdq>QuantizeAndDequantizeTracked: output, updated range and count, and the range used,
    bit for bit, delayed or not, with slices that have no update yet and NaN/inf batches."""
    rng = np.random.default_rng(zlib.crc32(repr(("tracked", dtype, shape, axis)).encode()))
    depth = 1 if axis == -1 else shape[axis]
    for trial in range(6):
        unsigned = trial == 5
        attrs = dict(signed_input=not unsigned, num_bits=int(rng.choice([2, 4, 8, 16])),
                     round_mode=["HALF_TO_EVEN", "HALF_UP"][trial % 2], narrow_range=trial == 1,
                     momentum=float(rng.choice([0.0, 0.5, 0.99])), delayed=trial % 3 != 0)
        x = random_input(rng, dtype, shape, special=trial % 3, unsigned=unsigned)
        lo, hi = (v.astype(np.float32) for v in random_range(rng, "float32", depth, unsigned))
        updates = rng.integers(0, 3, depth).astype(np.int64) if trial % 2 else np.full(depth, 2, np.int64)
        want = _core.tracked_quantize(x, lo, hi, updates, axis=axis, **attrs)
        out = device_buffer(x.size, dtype, trial % 4)
        out = out.view(*x.shape) if torch is not None else out.reshape(x.shape)
        got = db.tracked_quantize(upload(x, trial % 3), upload_vector(lo), upload_vector(hi), upload_vector(updates),
                                  axis=axis, out=out, **attrs)
        label = f"trial {trial} {attrs}"
        np.testing.assert_array_equal(bits(download(out, dtype).reshape(x.shape)), bits(want[0]), err_msg=label)
        for name, dev, host in zip(("new_min", "new_max", "new_updates", "used_min", "used_max"), got[1:], want[1:]):
            np.testing.assert_array_equal(bits(download_vector(dev).reshape(-1)), bits(np.asarray(host).reshape(-1)),
                                          err_msg=f"{label} {name}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("shape,axis", [((1 << 28,), -1), ((64, 1 << 22), 0), ((1 << 22, 64), 1),
                                        ((16, 256, 1 << 16), 1)])
def test_2pow28_elements(dtype, shape, axis):
    rng = np.random.default_rng(28)
    x = (rng.standard_normal(shape, dtype=np.float32) * 5).astype(np_dtype(dtype))
    depth = 1 if axis == -1 else shape[axis]
    lo, hi = random_range(rng, dtype, depth, False)
    check_quantize(x, axis, lo, hi, dict(range_given=False), in_off=1, out_off=1)
    check_quantize(x, axis, lo, hi, dict(range_given=True, round_mode="HALF_UP"))


@pytest.mark.skipif(torch is None, reason="CUDA graph capture test uses PyTorch")
@pytest.mark.parametrize("shape,axis", [((1 << 20,), -1), ((256, 4096), 0), ((4096, 256), 1)])
def test_auto_path_never_syncs_with_host(shape, axis):
    """Stream capture fails on any host synchronisation, so an auto-range call
    that can be captured into a CUDA graph and replayed never waits on the GPU."""
    rng = np.random.default_rng(5)
    x = random_input(rng, "float32", shape)
    dx = upload(x, 0)
    out = torch.empty_like(dx)
    ws = torch.empty(max(1, db.workspace_bytes(dx, axis=axis)), dtype=torch.uint8, device="cuda")
    db.quantize(dx, axis=axis, out=out, workspace=ws)  # warm-up outside the capture
    torch.cuda.synchronize()
    out.fill_(float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        db.quantize(dx, axis=axis, out=out, workspace=ws)
    graph.replay()
    want = _core.quantize(x, np.zeros(1 if axis == -1 else shape[axis], np.float32),
                          np.zeros(1 if axis == -1 else shape[axis], np.float32), axis=axis)
    np.testing.assert_array_equal(bits(download(out, "float32")), bits(want))
