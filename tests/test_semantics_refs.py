"""docs/SEMANTICS.md is the statement of the ops' behaviour that code, tests and docs cite as
"SEMANTICS §n" or "SEMANTICS §n.m": every such citation must name a section (or a numbered item
of one) that the document has, and the README's differences table must list each FIX row."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEMANTICS = (ROOT / "docs" / "SEMANTICS.md").read_text()
CITED = re.compile(r"SEMANTICS (?:FIX )?§(\d+)(?:\.(\d+))?")
SOURCES = [p for pattern in ("tensorflow_qdq/**/*.py", "tests/**/*.py", "cc/*", "kernels/*", "docs/*.md", "*.md",
                             "benchmarks/*.py", "examples/*.py")
           for p in ROOT.glob(pattern) if p.is_file() and ".venv" not in p.parts]


def _sections():
    """{section number: {item numbers}} from the '## n.' headings and the '1. ' lists under them."""
    found, current = {}, None
    for line in SEMANTICS.splitlines():
        heading = re.match(r"## (\d+)\. ", line)
        if heading:
            current = int(heading.group(1))
            found[current] = set()
            continue
        item = re.match(r"(\d+)\. ", line)
        if item and current is not None:
            found[current].add(int(item.group(1)))
    return found


def test_every_citation_names_a_section_that_exists():
    sections = _sections()
    assert sorted(sections) == list(range(1, len(sections) + 1)) and len(sections) >= 9
    assert sections[3] == set(range(1, 10))  # the forward computation's nine steps
    cited = 0
    for path in SOURCES:
        for match in CITED.finditer(path.read_text(errors="replace")):
            section, item = int(match.group(1)), match.group(2)
            where = f"{path.relative_to(ROOT)}: {match.group(0)}"
            assert section in sections, where
            assert item is None or int(item) in sections[section], where
            cited += 1
    assert cited >= 50  # the citations this test guards are really found


def test_no_citation_of_the_old_out_of_repo_spec():
    for path in SOURCES:
        if path.name == "test_semantics_refs.py":
            continue
        assert "SPEC §" not in path.read_text(errors="replace"), path


def test_every_fix_of_the_semantics_is_a_row_of_the_readme_table():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Differences from TensorFlow", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    fixes = re.findall(r"\*\*FIX", SEMANTICS)
    # 8 README rows; SEMANTICS marks them in §1-§5 (the axis-abort FIX covers two of its items)
    assert len(rows) == 8 and len(fixes) >= len(rows)
    for needle in ("half and bfloat16", "per-channel", "ignored", "second-order", "NaN", "degenerate", "aborts",
                   "out-of-range negative"):
        assert needle.lower() in SEMANTICS.lower(), needle
