"""The Python examples in docs/KERAS.md run as written and print what the text says."""

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "KERAS.md"


def test_keras_doc_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 4
    out = io.StringIO()
    try:
        for i, block in enumerate(blocks):
            with contextlib.redirect_stdout(out):
                exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), {})
    finally:
        import tensorflow_qdq

        tensorflow_qdq.restore_builtins()
    printed = out.getvalue()
    assert printed.count("True") == 3 and "False" not in printed, printed
    assert "['QuantizedConv2D', 'Flatten', 'QuantizedDense']" in printed
    assert "-1.0 2.0\n-1.0 2.0\n" in printed
    assert "['Qdq>QuantizeAndDequantizeV4']" in printed
