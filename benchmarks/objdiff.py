"""The CPU core's machine code in two trees, function by function.

    python benchmarks/objdiff.py BEFORE_TREE [AFTER_TREE]

Compiles each tree's core units (sources.bzl: CORE_SOURCES with CORE_FLAGS, AVX2 flags where
listed, -O3 as setup.py) and disassembles them. A function's body is compared with addresses,
symbol names and memory displacements blanked, so a renamed function or a loop table whose
fields moved still matches; what is left differs in instructions. Prints, per unit, how many
function bodies the two trees share and the functions whose bodies are not shared: a refactor
that keeps the loops' code lists only the code around them.
"""

import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sources_of(tree):
    lists = {}
    exec(compile((Path(tree) / "sources.bzl").read_text(), "sources.bzl", "exec"), {}, lists)  # noqa: S102
    return lists


def functions(obj):
    """{function name: normalized instructions}."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", str(obj)], capture_output=True, text=True,
                         check=True).stdout
    bodies = {}
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].endswith(">:"):
            code = (re.sub(r"^\s*[0-9a-f]+:\s*", "", line) for line in lines[1:])
            code = (re.sub(r"\s<.*$", "", line) for line in code)  # call/jump target names
            code = (re.sub(r"^(j\w+|call)\s+[0-9a-f]+$", r"\1 X", line) for line in code)  # and addresses
            bodies[lines[0].split("<", 1)[1][:-2]] = tuple(re.sub(r"-?0x[0-9a-f]+\(", "D(", c) for c in code)
    return bodies


def compile_core(tree, out_dir):
    lists = sources_of(tree)
    objects = {}
    for source in lists["CORE_SOURCES"]:
        flags = list(lists["CORE_FLAGS"]) + (lists["AVX2_FLAGS"] if source in lists["AVX2_SOURCES"] else [])
        obj = Path(out_dir) / (Path(source).stem + ".o")
        subprocess.run(["g++", "-std=c++17", "-O3", "-fPIC", "-DNDEBUG", *flags, "-I", str(tree), "-c",
                        str(Path(tree) / source), "-o", str(obj)], check=True)
        objects[source] = obj
    return objects


def main(argv):
    before, after = Path(argv[0]), Path(argv[1] if len(argv) > 1 else HERE.parent)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        old, new = compile_core(before, Path(tmp) / "a"), compile_core(after, Path(tmp) / "b")
        for source in sorted(set(old) | set(new)):
            a = functions(old[source]) if source in old else {}
            b = functions(new[source]) if source in new else {}
            ca, cb = collections.Counter(a.values()), collections.Counter(b.values())
            print(f"{source}: {len(a)} -> {len(b)} functions, {sum((ca & cb).values())} bodies the same")
            for name, body in b.items():
                if cb[body] > ca[body]:
                    print(f"    differs: {name[:160]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
