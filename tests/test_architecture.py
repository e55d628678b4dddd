"""The package's shape is part of its contract: wings whose imports point down only, no cycles
(not even behind a function-level import), small modules, a small top level."""

from __future__ import annotations

import ast
from pathlib import Path

import embed_collections

PACKAGE = Path(embed_collections.__file__).parent
# Bottom to top: a module may import its own wing or any wing below it.
WINGS = [
    *("base", "corpus", "engine", "chunking", "stores", "record", "archive", "report"),
    *("query", "runner", "evaluation", "api", "cli"),
]
TOP_LEVEL_HELPERS = {"errors", "atomic", "progress"}
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = ["embed_collections", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every package module `path` imports, at any depth (functions and TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path.name}: relative import (use absolute imports)"
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {name for name in found if name in known}


def wing(module: str) -> str:
    parts = module.split(".")
    if module == "embed_collections":
        return "api"
    if parts[1] == "__main__":
        return "cli"
    if parts[1] in TOP_LEVEL_HELPERS:
        return "base"
    return parts[1]


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def test_every_module_belongs_to_a_known_wing():
    assert {wing(m) for m in modules()} <= set(WINGS)


def test_imports_point_down_only():
    upward = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        for target in targets
        if WINGS.index(wing(target)) > WINGS.index(wing(source))
    ]
    assert upward == []


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_modules_stay_small():
    long = {
        name: n
        for name, p in modules().items()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_top_level_holds_the_api_errors_and_a_few_helpers():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8
    assert top == sorted(["__init__.py", "__main__.py", *(f"{h}.py" for h in TOP_LEVEL_HELPERS)])


def test_the_checker_sees_an_upward_and_a_cyclic_import(tmp_path):
    """Imports inside functions and TYPE_CHECKING blocks count (else the test proves nothing)."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from embed_collections.runner.pipeline import run\n"
        "def f():\n    from embed_collections.query import search\n"
    )
    known = {"embed_collections.runner.pipeline", "embed_collections.query.search"}
    assert imports(source, known) == known


def test_other_wings_use_only_the_engine_front_door():
    """The engine's rooms are its own business: other wings import `embed_collections.engine`."""
    behind = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        if wing(source) != "engine"
        for target in targets
        if wing(target) == "engine" and target != "embed_collections.engine"
    ]
    assert behind == []


def string_constants(path: Path) -> list[str]:
    """Every string literal of a module that is not a docstring."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_a_backend_or_executor_name_is_spelled_in_one_module():
    """Names are looked up in the tables (`engine/backends/kinds.py`, `engine/executors`),
    never matched as strings elsewhere."""
    from embed_collections.engine import BACKENDS, EXECUTORS

    homes = {
        **dict.fromkeys(BACKENDS, "embed_collections.engine.backends.kinds"),
        **dict.fromkeys(EXECUTORS, "embed_collections.engine.executors"),
    }
    ray_api = "embed_collections.engine.executors.ray_cluster"  # Ray's own words, not ours:
    allowed = {(ray_api, "ray"), (ray_api, "local")}  # its logger; `ray.init`'s new instance
    spelled = [
        f"{module}: {text!r}"
        for module, path in modules().items()
        for text in string_constants(path)
        if text in homes and homes[text] != module and (module, text) not in allowed
    ]
    assert spelled == []


def test_no_backend_ability_is_found_with_hasattr():
    """Optional abilities are methods of `engine.Backend` with defaults."""
    found = [
        f"{module}:{node.lineno}"
        for module, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("hasattr", "getattr")
        and node.args
        and isinstance(node.args[0], ast.Name)
        and "backend" in node.args[0].id
    ]
    assert found == []


def test_workers_and_their_parent_speak_in_typed_messages():
    """What a worker sends its parent is a message class of `executors/workers.py`, never a
    tuple unpacked by position."""
    path = PACKAGE / "engine" / "executors" / "workers.py"
    sent = [
        node.args[0]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "send"
        and node.args
    ]
    assert sent and all(isinstance(arg, ast.Call) for arg in sent)
