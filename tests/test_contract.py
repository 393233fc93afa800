"""The op contract is stated once per language, cc/qdq_contract.h and tensorflow_qdq/_contract.py:
the two agree with each other, with the OpDefs the library registers and with what the ops and
the binding enforce; and nothing else in the sources spells the facts again."""

import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import op_def_registry

import tensorflow_qdq  # noqa: F401 - loads the op library
from tensorflow_qdq import _contract, _core
from tensorflow_qdq._loader import ops

ROOT = Path(__file__).resolve().parents[1]
HEADER = (ROOT / "cc" / "qdq_contract.h").read_text()
OPS = ["Qdq>QuantizeAndDequantizeV2", "Qdq>QuantizeAndDequantizeV3", "Qdq>QuantizeAndDequantizeV4",
       "Qdq>QuantizeAndDequantizeV4Grad", "Qdq>QuantizeAndDequantizeLsqGrad", "Qdq>QuantizeAndDequantizeTracked"]


def _constexpr(name):
    value = re.search(rf"constexpr \w+ {name} = ([^;]+);", HEADER).group(1)
    return {"true": True, "false": False}.get(value, None) if value in ("true", "false") else int(value)


def _macro(name):
    joined = HEADER.replace("\\\n", " ")  # continuation lines
    return " ".join(re.search(rf"#define {name}(?:\(X\))? (.+)", joined).group(1).split())


def test_header_and_module_state_the_same_contract():
    assert (_constexpr("kMinBits"), _constexpr("kMaxSignedBits"), _constexpr("kMaxUnsignedBits")) == (
        _contract.MIN_BITS, _contract.MAX_BITS[True], _contract.MAX_BITS[False])
    modes = re.search(r"kRoundModes\[kNumRoundModes\] = \{(.+?)\};", HEADER).group(1)
    assert tuple(re.findall(r'"(\w+)"', modes)) == _contract.ROUND_MODES
    assert _constexpr("kNumRoundModes") == len(_contract.ROUND_MODES)
    defaults = {"signed_input": "kDefaultSignedInput", "num_bits": "kDefaultNumBits",
                "range_given": "kDefaultRangeGiven", "narrow_range": "kDefaultNarrowRange", "axis": "kDefaultAxis"}
    for attr, name in defaults.items():
        assert _constexpr(name) == _contract.DEFAULTS[attr], attr
    # The four spellings of the element types, in one order.
    named = re.findall(r'X\([\w:]+, "(\w+)"\)', _macro("QDQ_FOR_EACH_NAMED_TYPE"))
    assert tuple(named) == _contract.DTYPES
    # The compute types: Python's table and the core's Compute<T> (cc/qdq_float16.h; float and
    # double compute in themselves, the narrow types as specialized there).
    assert tuple(_contract.COMPUTE_DTYPES) == _contract.DTYPES
    float16_h = (ROOT / "cc" / "qdq_float16.h").read_text()
    core_names = dict(re.findall(r'X\(([\w:]+), "(\w+)"\)', _macro("QDQ_FOR_EACH_NAMED_TYPE")))
    for core_type, name in core_names.items():
        spec = re.search(rf"struct Compute<{core_type.split('::')[-1]}> \{{\s*using type = (\w+);", float16_h)
        compute = spec.group(1) if spec else core_type
        assert {"float": "float32", "double": "float64"}[compute] == _contract.COMPUTE_DTYPES[name], name
    core = re.findall(r"X\(([\w:]+)\)", _macro("QDQ_FOR_EACH_TYPE"))
    assert core == re.findall(r"X\(([\w:]+),", _macro("QDQ_FOR_EACH_NAMED_TYPE"))
    tf_names = {"bfloat16": "::tensorflow::bfloat16", "half": "Eigen::half", "float": "float", "double": "double"}
    attr_types = re.search(r"T: \{(.+)\}", _macro("QDQ_TYPE_ATTR")).group(1).split(", ")
    assert re.findall(r"X\(([\w:]+),", _macro("QDQ_FOR_EACH_TF_TYPE")) == [tf_names[t] for t in attr_types]
    assert re.findall(r"X\([\w:]+, ([\w:]+)\)", _macro("QDQ_FOR_EACH_TF_TYPE")) == core
    assert [tf.as_dtype(t).name for t in attr_types] == list(_contract.DTYPES)
    # The attribute specs carry the same defaults.
    assert _macro("QDQ_ROUND_MODE_ATTR") == ('"round_mode: {' + ", ".join(f"'{m}'" for m in _contract.ROUND_MODES)
                                             + "} = '" + _contract.DEFAULTS["round_mode"] + "'\"")
    for attr, macro in (("signed_input", "QDQ_SIGNED_INPUT_ATTR"), ("num_bits", "QDQ_NUM_BITS_ATTR"),
                        ("range_given", "QDQ_RANGE_GIVEN_ATTR"), ("narrow_range", "QDQ_NARROW_RANGE_ATTR"),
                        ("axis", "QDQ_AXIS_ATTR")):
        default = _contract.DEFAULTS[attr]
        text = str(default).lower() if isinstance(default, bool) else str(default)
        assert _macro(macro).endswith(f'= {text}"'), macro


@pytest.mark.parametrize("op", OPS)
def test_registered_op_defs_follow_the_contract(op):
    op_def = op_def_registry.get(op)
    attrs = {a.name: a for a in op_def.attr}
    allowed = [tf.as_dtype(t).name for t in attrs["T"].allowed_values.list.type]
    assert sorted(allowed) == sorted(_contract.DTYPES)
    if "round_mode" in attrs:
        assert tuple(v.decode() for v in attrs["round_mode"].allowed_values.list.s) == _contract.ROUND_MODES
        assert attrs["round_mode"].default_value.s.decode() == _contract.DEFAULTS["round_mode"]
    for name in ("signed_input", "num_bits", "narrow_range", "axis"):
        if name in attrs:
            value = attrs[name].default_value
            assert (value.b if value.WhichOneof("value") == "b" else value.i) == _contract.DEFAULTS[name], name
    if "range_given" in attrs and op != "Qdq>QuantizeAndDequantizeV3":  # V3's default is True, as TF's
        assert attrs["range_given"].default_value.b == _contract.DEFAULTS["range_given"]


@pytest.mark.parametrize("signed", [True, False])
def test_the_ops_and_the_binding_enforce_the_bounds(signed):
    top = _contract.MAX_BITS[signed]
    x = np.linspace(-1, 1, 9).astype(np.float32)
    for bits, ok in ((_contract.MIN_BITS, True), (top, True), (top + 1, False), (_contract.MIN_BITS - 1, False)):
        if ok:
            ops.qdq_quantize_and_dequantize_v4(x, 0.0, 0.0, signed_input=signed, num_bits=bits)
            _core.quantize(x, np.zeros(1, np.float32), np.zeros(1, np.float32), signed_input=signed, num_bits=bits)
        else:
            with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=f"num_bits.*{top}"):
                ops.qdq_quantize_and_dequantize_v4(x, 0.0, 0.0, signed_input=signed, num_bits=bits)
            with pytest.raises(ValueError, match=f"num_bits must be in \\[{_contract.MIN_BITS}, {top}\\]"):
                _core.quantize(x, np.zeros(1, np.float32), np.zeros(1, np.float32), signed_input=signed,
                               num_bits=bits)
            with pytest.raises(ValueError, match=f"must be in \\[{_contract.MIN_BITS}, {top}\\]"):
                _contract.check_num_bits(bits, signed)
    for mode in _contract.ROUND_MODES:
        _core.quantize(x, np.zeros(1, np.float32), np.zeros(1, np.float32), round_mode=mode)
    with pytest.raises(ValueError, match="round_mode"):
        _core.quantize(x, np.zeros(1, np.float32), np.zeros(1, np.float32), round_mode="HALF_DOWN")


def test_no_other_source_spells_the_contract_again():
    """The bounds, the round-mode list and the type list appear in the two contract files only."""
    patterns = [r"\b61 if\b", r"\? 61 : 62", r"""["']HALF_TO_EVEN["'],\s*["']HALF_UP["']""",
                r"\{bfloat16, half, float, double\}", r"float32 or float64"]
    sources = [p for pattern in ("tensorflow_qdq/**/*.py", "cc/*", "kernels/*") for p in ROOT.glob(pattern)
               if p.is_file() and p.suffix in (".py", ".h", ".cc", ".cuh", ".cu")
               and p.name not in ("_contract.py", "qdq_contract.h")]
    assert len(sources) > 30
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in sources for pattern in patterns
             for m in re.finditer(pattern, p.read_text())]
    assert not found, found


def test_python_signatures_default_to_the_contract():
    # The public wrappers spell their defaults in their signatures (as tf.quantization does, so
    # that help() shows them): each must be the contract's. (axis: None is per tensor in the
    # tf.quantization convention, -1 in the ops'.)
    import inspect

    from tensorflow_qdq import _api, _composite, _learned, raw_ops
    from tensorflow_qdq.keras import QuantizeAndDequantize

    functions = [_api.quantize_and_dequantize, _api.quantize_and_dequantize_v2, _api.quantize_and_dequantize_v4,
                 raw_ops.QuantizeAndDequantizeV2, raw_ops.QuantizeAndDequantizeV4, raw_ops.QuantizeAndDequantizeV4Grad,
                 _learned.quantize_and_dequantize_learned, _composite.lsq_step_derivative]
    checked = 0
    for fn in functions:
        for name, parameter in inspect.signature(fn).parameters.items():
            if name in _contract.DEFAULTS and not (name == "axis" and parameter.default is None):
                assert parameter.default == _contract.DEFAULTS[name], (fn.__qualname__, name)
                checked += 1
    layer = inspect.signature(QuantizeAndDequantize).parameters
    assert layer["round_mode"].default == _contract.DEFAULTS["round_mode"]
    assert layer["num_bits"].default == _contract.DEFAULTS["num_bits"]
    assert checked >= 25
