"""docs/ARCHITECTURE.md's "adding an element type" and "adding a round mode" walk-throughs list
the production files a newcomer edits. Recomputed here from the sources: the files that spell
a narrow type's storage name or a round mode's name; the lists must match, so the document
says the real count."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def _production_files():
    files = [p for pattern in ("cc/*", "kernels/*", "tensorflow_qdq/**/*.py") for p in ROOT.glob(pattern)
             if p.is_file() and p.suffix in (".h", ".cc", ".cu", ".cuh", ".py")]
    return {str(p.relative_to(ROOT)): p.read_text() for p in files}


def _listed(section):
    """(the files that open the numbered steps, the files of the optional fast path's
    paragraph) of a walk-through."""
    text = DOC.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    steps = set(re.findall(r"^\d+\. `([\w/.]+)`", text, re.M))
    optional = text.partition("Optional, for speed:")[2].split("\n\n", 1)[0]
    return steps, set(re.findall(r"`((?:cc|kernels|tensorflow_qdq)/[\w/.]+)`", optional))


def test_the_type_walkthrough_lists_the_files_that_spell_a_type():
    names = r"bf16_t|Eigen::bfloat16|::tensorflow::bfloat16|ml_dtypes|tf\.bfloat16|[\"']bfloat16[\"']"
    spelled = {path for path, text in _production_files().items() if re.search(names, text)}
    required, optional = _listed("Adding an element type")
    assert spelled == required | optional, spelled ^ (required | optional)
    # The fast path is optional because the generic lanes serve any type (tests/test_generic_lanes.py).
    assert optional == {"cc/qdq_avx2_lanes.h"}
    assert len(required) == 3  # the count the document states
    assert "Three production files change" in DOC


def test_the_round_mode_walkthrough_lists_the_files_that_spell_a_mode():
    spelled = {path for path, text in _production_files().items() if re.search(r"HALF_UP|kHalfUp", text)}
    required, optional = _listed("Adding a round mode")
    assert spelled == required and not optional, spelled ^ required
    assert len(required) == 4
    assert "Four production files change" in DOC


def test_every_path_in_the_map_exists():
    for path in re.findall(r"`((?:cc|kernels|tensorflow_qdq|tests|docs|benchmarks)/[\w/.]+\.\w+)`", DOC):
        assert (ROOT / path).exists() or (ROOT / "tensorflow_qdq" / path).exists(), path
