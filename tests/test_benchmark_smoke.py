"""The CPU benchmark runs end to end (its --tiny mode) and writes only its own section of RESULTS.md.

No timing is asserted: speed is what the benchmark reports, not what tests check.
"""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # tooling, not the package
import cpu as _benchmark  # noqa: E402
from _results import write_results  # noqa: E402


def test_tiny_run_writes_table_plot_and_only_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    gpu = "<!-- gpu:begin -->\n## GPU\nkept as is\n<!-- gpu:end -->"
    results.write_text(f"# Benchmark results\n\n{_benchmark.BEGIN}\nold cpu table\n{_benchmark.END}\n\n{gpu}\n")

    rows = _benchmark.main(["--tiny", "--out", str(tmp_path)])

    expected = [(c.name, c.layout, c.dtype, s) for c in _benchmark.CASES
                if (c.name, c.layout) in _benchmark.QUICK_NAMES and c.dtype == "float32"
                for s in _benchmark.TINY_SIZES]
    assert [(r.case.name, r.case.layout, r.case.dtype, r.log2) for r in rows] == expected
    for r in rows:
        assert all(math.isfinite(v) and v > 0 for v in (r.ours_s, r.tf_s, r.copy_s, r.speedup, r.copy_gbps,
                                                          r.best_speedup))
        assert all(b <= m for b, m in zip(r.best, (r.ours_s, r.tf_s, r.copy_s)))
    text = results.read_text()
    assert "old cpu table" not in text
    assert gpu in text  # the GPU helper's section survives
    assert text.count(_benchmark.BEGIN) == 1 and text.count(_benchmark.END) == 1
    section = text.split(_benchmark.BEGIN)[1].split(_benchmark.END)[0]
    assert "Load average" in section
    assert sum(line.startswith("| V4") for line in section.splitlines()) == len(rows)
    assert (tmp_path / "cpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_file_created_when_missing(tmp_path):
    write_results(tmp_path / "RESULTS.md", f"{_benchmark.BEGIN}\nx\n{_benchmark.END}", _benchmark.BEGIN,
                  _benchmark.END)
    assert _benchmark.BEGIN in (tmp_path / "RESULTS.md").read_text()


@pytest.mark.parametrize("layout,axis", [("per-tensor", -1), ("axis 0", 0), ("middle axis", 1), ("last axis", 2)])
def test_benchmarked_calls_compute_the_same_as_tensorflow(layout, axis):
    # The benchmark must time equivalent work: ours and TensorFlow's callables give the same bits.
    import numpy as np

    for name in ["V4 auto", "V4Grad"]:
        case = _benchmark.Case(name, layout, "float32", 3)
        ours, theirs = _benchmark._setup(case, 1 << 12)
        np.testing.assert_array_equal(np.asarray(ours()[0] if name == "V4Grad" else ours()).view(np.uint32),
                                      np.asarray(theirs()).view(np.uint32))


@pytest.mark.slow
def test_deploy_quick_run_times_ours_own_and_float_and_writes_nothing(tmp_path):
    """benchmarks/deploy.py --quick: one small config (MobileNetV2-1.0 96x96), both runtimes, in a
    worker process; prints its table, leaves the results file alone. No timing is asserted."""
    import deploy as _deploy

    results = tmp_path / "RESULTS.md"
    results.write_text("untouched\n")
    rows = _deploy.main(["--quick", "--out", str(results)])
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("MobileNetV2-1.0 96x96", runtime, 1, 1)
                                                        for runtime in _deploy.RUNTIMES]
    assert all(math.isfinite(v) and v > 0 for r in rows for v in r[4:])
    assert results.read_text() == "untouched\n"
    with pytest.raises(ValueError, match=r"--configs: 'ResNet50:12' is not"):
        _deploy.main(["--configs", "ResNet50:12"])
