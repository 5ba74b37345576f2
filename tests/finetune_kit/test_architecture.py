"""The library's shape, checked on its source: import direction, no cycles, a public API
without side effects, modules of a readable size.

The core is every module under ``finetune_kit/`` except the facade ``finetune_kit/__init__.py``
(which re-exports a few task entry points lazily, by name, and is checked separately: importing
it loads nothing). ``strategies/`` installs as ``finetune_kit.strategies`` and ``tasks/`` as
``finetune_kit.tasks``; both may import the core, never the other way round.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = REPO / "finetune_kit"
#: what library code must never import: the tasks, the built-in strategies, a command line
FORBIDDEN = ("finetune_kit.tasks", "finetune_kit.strategies", "tasks", "strategies", "typer", "click")
#: modules allowed over ~400 lines, with the reason (none today)
LONG_MODULES: dict[str, str] = {}
MAX_LINES = 420


def _module_name(path: Path, root: Path, package: str) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [package, *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _core_modules() -> dict[str, Path]:
    return {_module_name(p, CORE, "finetune_kit"): p for p in sorted(CORE.rglob("*.py"))
            if p != CORE / "__init__.py"}


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports: top-level and inside functions, relative imports resolved,
    ``importlib.import_module("...")`` with a literal name included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def test_core_imports_no_task_strategy_or_command_line():
    offenders = []
    for module, path in _core_modules().items():
        for name in _imports(path, module):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offenders, "library code must not import tasks, strategies or a CLI:\n" + "\n".join(offenders)


def test_core_imports_form_no_cycle():
    modules = _core_modules()
    graph = {m: sorted({n for n in _imports(p, m) if n in modules and n != m}) for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in graph:
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle in the core: " + " -> ".join(cycle)


def test_cycle_detector_sees_a_planted_cycle(tmp_path, monkeypatch):
    """The walker is not vacuous: two modules importing each other (one lazily) are found."""
    pkg = tmp_path / "finetune_kit"
    pkg.mkdir()
    (pkg / "a.py").write_text("from finetune_kit.b import x\n")
    (pkg / "b.py").write_text("def x():\n    from finetune_kit import a\n    import finetune_kit.tasks.cli\n")
    monkeypatch.setattr(sys.modules[__name__], "CORE", pkg)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    with pytest.raises(AssertionError, match="finetune_kit.a -> finetune_kit.b -> finetune_kit.a"):
        test_core_imports_form_no_cycle()
    with pytest.raises(AssertionError, match="b.py imports finetune_kit.tasks"):
        test_core_imports_no_task_strategy_or_command_line()


def test_strategies_import_only_the_core():
    for path in sorted((REPO / "strategies").rglob("*.py")):
        module = _module_name(path, REPO / "strategies", "finetune_kit.strategies")
        bad = [n for n in _imports(path, module) if n.startswith(("finetune_kit.tasks", "tasks", "typer"))]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_public_api_loads_lazily_and_without_side_effects():
    code = (
        "import os, sys; before = dict(os.environ); import finetune_kit as fk; "
        "assert dict(os.environ) == before, 'import changed the environment'; "
        "heavy = [m for m in ('torch', 'timm', 'compressai', 'finetune_kit.tasks') if m in sys.modules]; "
        "assert not heavy, heavy; "
        "missing = [n for n in fk.__all__ if getattr(fk, n, None) is None]; "
        "assert not missing, missing; print(len(fk.__all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) >= 15


def test_no_module_is_over_about_400_lines():
    long = {}
    for root in ("finetune_kit", "strategies", "tasks"):
        for path in (REPO / root).rglob("*.py"):
            n = len(path.read_text().splitlines())
            rel = str(path.relative_to(REPO))
            if n > MAX_LINES and rel not in LONG_MODULES:
                long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines (split them, or state the reason in LONG_MODULES): {long}"
