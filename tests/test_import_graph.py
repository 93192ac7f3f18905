"""Data flows one way between the zoo, the token-sparse networks and the exporters: no import cycle.

`edgeattack.export.onnx_export` reads token-sparse metadata from `edgeattack.sparsity.base`, which
reads the architecture from `edgeattack.zoo.arch`; neither of those may import the exporters or the
profiler (which itself exports to ONNX), not even inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edgeattack

PACKAGE = Path(edgeattack.__file__).parent


def _imports(module: str) -> set[str]:
    """Every edgeattack module `module`'s source imports, at the top or inside functions."""
    path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeattack"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("edgeattack"))
    return found


def _reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = PACKAGE.joinpath(*module.split(".")[1:])
        if path.with_suffix(".py").is_file():
            todo.extend(_imports(module))
    return seen


def test_sparsity_base_and_zoo_arch_never_reach_the_exporters():
    for start in ("edgeattack.sparsity.base", "edgeattack.zoo.arch"):
        reached = _reachable(start)
        assert not {m for m in reached if m.startswith(("edgeattack.export", "edgeattack.zoo.profile"))}, start


def test_the_exporter_reads_token_sparsity_from_the_base_module():
    assert "edgeattack.sparsity.base" in _imports("edgeattack.export.onnx_export")
    assert "edgeattack.zoo.arch" in _imports("edgeattack.sparsity.base")
