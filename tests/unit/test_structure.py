"""The structure the architecture promises, checked on the source tree itself.

Engine knowledge lives in ``runtimes/`` (one module per engine) and the catalogue's tables:
no other module of the package compares an engine's name, branches on an ``Engine``
member, keys a table by engine name or retypes a list of engines (docs/architecture.md,
"Adding an engine").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from modeldeploy.catalog import Engine
from modeldeploy.runtimes import RUNTIMES

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "modeldeploy"
ENGINE_NAMES = {str(engine) for engine in Engine}
ALLOWED = {PACKAGE / "catalog.py", *(PACKAGE / "runtimes").rglob("*.py")}


def _is_engine_name(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value in ENGINE_NAMES:
        return True
    # Engine.VLLM, catalog.Engine.LLAMACPP, ...
    return (
        isinstance(node, ast.Attribute)
        and node.attr in Engine.__members__
        and isinstance(node.value, ast.Name | ast.Attribute)
        and (getattr(node.value, "id", None) or getattr(node.value, "attr", None)) == "Engine"
    )


def engine_name_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each comparison, match case or table key that names an engine."""
    found: list[tuple[int, str]] = []
    tree = ast.parse(source)
    # The API's enum (``Literal["auto", "vllm", ...]``) is where the names are declared.
    declared = {
        id(node.slice)
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript) and getattr(node.value, "id", None) == "Literal"
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                names = operand.elts if isinstance(operand, ast.Tuple | ast.List | ast.Set) else []
                if _is_engine_name(operand) or any(_is_engine_name(n) for n in names):
                    found.append((node.lineno, "comparison"))
                    break
        elif isinstance(node, ast.match_case):
            if any(_is_engine_name(n) for n in ast.walk(node.pattern)):
                found.append((node.pattern.lineno, "match case"))
        elif isinstance(node, ast.Dict):
            if any(key is not None and _is_engine_name(key) for key in node.keys):
                found.append((node.lineno, "table keyed by engine"))
        elif (
            isinstance(node, ast.Tuple | ast.List | ast.Set)
            and id(node) not in declared
            and sum(_is_engine_name(element) for element in node.elts) > 1
        ):
            found.append((node.lineno, "list of engines"))
    return found


def test_no_engine_name_is_compared_outside_runtimes_and_the_catalogue() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in ALLOWED
        for line, what in engine_name_uses(path.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("source", "count"),
    [
        ('if engine == "vllm": pass', 1),
        ("if placement.engine is Engine.VLLM: pass", 1),
        ('x = "a" if e in ("llamacpp", "vllm") else "b"', 2),
        ('PORTS = {"llamacpp": 8080}', 1),
        ('parser.add_argument("engine", choices=("llamacpp", "vllm"))', 1),
        ("match e:\n    case Engine.SGLANG:\n        pass", 1),
        ('if fmt == "gguf": pass', 0),
        ('runtime = runtime_for("vllm")', 0),
    ],
)
def test_the_check_finds_what_it_should(source: str, count: int) -> None:
    assert len(engine_name_uses(source)) == count


def test_every_engine_has_a_runtime() -> None:
    assert set(RUNTIMES) == set(Engine)
    assert all(RUNTIMES[engine].engine is engine for engine in Engine)
