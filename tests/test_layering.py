"""The package's layering, read from its sources: imports point one way, op layer <- keras <-
deploy (docs/ARCHITECTURE.md), and nothing inside the package imports the package face. The
faces (``__init__.py``) present their layer and, lazily, what builds on it (``to_onnx``,
``quantization_report(runtime=...)``).

Every import counts, module-level or inside a function (a lazy import is still a dependency)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "tensorflow_qdq"
RANK = {"op": 0, "keras": 1, "deploy": 2}


def _layer(module):
    """'op', 'keras' or 'deploy' for a dotted module name inside the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("keras", "deploy") else "op"


def _is_module(dotted):
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists() or any(
        path.parent.glob(path.name + ".*.so"))


def _imports(path):
    """(line, imported module) for each import of the package in the file; the face itself is
    'tensorflow_qdq'."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tensorflow_qdq")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("tensorflow_qdq"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                yield node.lineno, child if _is_module(child) else node.module


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        dotted = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        yield path, dotted.removesuffix(".__init__")


def test_the_rules_see_every_module():
    modules = [m for _, m in _sources()]
    assert {"tensorflow_qdq._composite", "tensorflow_qdq.keras._layer", "tensorflow_qdq.deploy.onnx"} <= set(modules)
    assert sum(1 for path, _ in _sources() for _ in _imports(path)) > 50


@pytest.mark.parametrize("path, module", list(_sources()), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_point_one_way(path, module):
    if module == "tensorflow_qdq":
        return  # the face presents every layer
    face = path.name == "__init__.py"  # a subpackage's face may present the layers above it
    wrong = []
    for line, imported in _imports(path):
        if imported == "tensorflow_qdq":
            wrong.append(f"line {line}: imports the package face")
        elif RANK[_layer(imported)] > RANK[_layer(module)] and not face:
            wrong.append(f"line {line}: the {_layer(module)} layer imports {imported} ({_layer(imported)} layer)")
    assert not wrong, f"{path.relative_to(PACKAGE.parent)}:\n" + "\n".join(wrong)
