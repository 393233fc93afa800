"""The op contract for Python, in one place: the element types, the num_bits bounds, the
round modes and the attribute defaults of the ``Qdq>`` ops. cc/qdq_contract.h states the same
facts for C++; tests/test_contract.py checks that the two agree with each other and with the
OpDefs the op library registers. Imports neither TensorFlow nor NumPy (the TensorFlow-free
core's helpers use it too). Semantics: docs/SEMANTICS.md."""

import numbers

# The element types (NumPy/TensorFlow names), in the order of cc/qdq_contract.h.
DTYPES = ("bfloat16", "float16", "float32", "float64")
# The type each computes in (cc/qdq_float16.h's Compute<T>): the narrow types in float32.
COMPUTE_DTYPES = {"bfloat16": "float32", "float16": "float32", "float32": "float32", "float64": "float64"}

# num_bits: 1..61 for a signed grid, 1..62 unsigned (SEMANTICS §3.1).
MIN_BITS = 1
MAX_BITS = {True: 61, False: 62}

# Round modes, in qdq::RoundMode order; the first is the default.
ROUND_MODES = ("HALF_TO_EVEN", "HALF_UP")

# Attribute defaults of V2/V4 (V3: range_given=True, no round_mode).
DEFAULTS = {"signed_input": True, "num_bits": 8, "range_given": False, "round_mode": ROUND_MODES[0],
            "narrow_range": False, "axis": -1}


def dtypes_text():
    """The element types for error messages: 'bfloat16, float16, float32 or float64'."""
    return ", ".join(DTYPES[:-1]) + " or " + DTYPES[-1]


def compute_dtype(dtype_name, name="input"):
    """The compute type's name of an element type's; TypeError naming the argument otherwise."""
    if dtype_name not in COMPUTE_DTYPES:
        raise TypeError(f"{name} must be {dtypes_text()}, got {dtype_name}")
    return COMPUTE_DTYPES[dtype_name]


def check_num_bits(num_bits, signed, name="num_bits", not_int=TypeError):
    """``num_bits`` as an int; else ValueError (out of bounds) or ``not_int`` (not an int),
    naming the argument and the bound."""
    if isinstance(num_bits, bool) or not isinstance(num_bits, numbers.Integral):
        raise not_int(f"{name} must be an int, got {num_bits!r}")
    top = MAX_BITS[bool(signed)]
    if not MIN_BITS <= num_bits <= top:
        kind = "signed" if signed else "unsigned"
        raise ValueError(f"{name}={num_bits} is out of range for {kind} quantization: must be in [{MIN_BITS}, {top}]")
    return int(num_bits)


def code_range(num_bits, signed, narrow_range):
    """(qmin, qmax): the integer codes of a grid (SEMANTICS §3.1): signed -2^(b-1) (narrow:
    -2^(b-1) + 1) .. 2^(b-1) - 1, unsigned 0 .. 2^b - 1."""
    if signed:
        return -(1 << (num_bits - 1)) + (1 if narrow_range else 0), (1 << (num_bits - 1)) - 1
    return 0, (1 << num_bits) - 1


def check_choice(name, value, choices):
    """``value`` if it is one of ``choices``; else ValueError naming the argument and the choices."""
    try:
        allowed = value in choices
    except TypeError:  # an unhashable value is not a choice either
        allowed = False
    if not allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


def check_round_mode(round_mode, name="round_mode"):
    return check_choice(name, round_mode, ROUND_MODES)
