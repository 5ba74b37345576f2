"""The library's shape, checked on its source: import direction, no cycles, a public API
without side effects, modules of a readable size.

The core is every module under ``finetune_kit/`` except the facade ``finetune_kit/__init__.py``
(which re-exports a few task entry points lazily, by name, and is checked separately: importing
it loads nothing). ``strategies/`` installs as ``finetune_kit.strategies`` and ``tasks/`` as
``finetune_kit.tasks``; both may import the core, never the other way round.

Over ``tasks/``: no import cycle (imports inside functions count), no private name imported or
reached across modules, and in modules outside the command-line layer an import inside a function
only with a comment saying why (a heavy optional dependency, start-up time). Each check lists
every offender of an area in one message.
"""
from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
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


# --- tasks/: no import cycle, no private name across modules, no hidden local import -------------

TASKS = REPO / "tasks"
#: areas of tasks/ by module (prefix); each check reports each area's offenders separately, so
#: the areas being rewritten on other branches can be marked without hiding the rest. "commands"
#: is the top-level command line (``tasks/cli.py``, ``tasks/cli_options.py``); "tasks" the rest
#: of the top level (``experiments_cli``, ``config_base``, ``cli_errors``, ``launch``).
AREAS = {"classification": ("finetune_kit.tasks.classification",),
         "compression": ("finetune_kit.tasks.compression",),
         "commands": ("finetune_kit.tasks.cli", "finetune_kit.tasks.cli_options")}


def _areas() -> list:
    """The areas as test parameters."""
    return [pytest.param(a, id=a) for a in ("tasks", *AREAS)]


def _task_modules() -> dict[str, Path]:
    return {_module_name(p, TASKS, "finetune_kit.tasks"): p for p in sorted(TASKS.rglob("*.py"))}


def _area(module: str) -> str:
    return next((a for a, prefixes in AREAS.items()
                 if any(module == p or module.startswith(p + ".") for p in prefixes)), "tasks")


def _is_cli_module(path: Path) -> bool:
    """The command-line layer: ``cli.py``, ``*_cli.py``, ``cli_*.py`` and ``launch.py`` (torchrun);
    its local imports keep ``--help`` fast and need no comment."""
    stem = path.stem
    return stem == "cli" or stem.endswith("_cli") or stem.startswith("cli_") or stem == "launch"


def _import_graph(modules: dict[str, Path]) -> dict[str, list[str]]:
    """Module -> the modules of ``modules`` it imports (module level and inside functions)."""
    return {m: sorted({n for n in _imports(p, m) if n in modules and n != m}) for m, p in modules.items()}


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every elementary cycle's strongly connected component, each shown as one closed path
    (``a -> b -> a``), found with Tarjan's algorithm; empty when the graph is acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_closed_path(graph, comp) for comp in components]


def _closed_path(graph: dict[str, list[str]], comp: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component."""
    inside, start = set(comp), comp[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in graph[v]:
            if w == start:
                return paths[v] + [start]
            if w in inside and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return comp + [start]  # unreachable for a strongly connected component


def _private_imports(path: Path, module: str, modules: dict[str, Path]) -> list[str]:
    """``from our.module import _name`` and ``our_module._name`` (a module of ours bound by an
    import) in ``path``: private names reached across modules. Dunder names are public."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: list[str] = []
    bound: dict[str, str] = {}  # local name -> our module it names

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("finetune_kit") or source == module:
                continue
            ours = {**_core_modules(), **modules}
            for a in node.names:
                if f"{source}.{a.name}" in ours:  # a module of ours, bound to a local name
                    bound[a.asname or a.name] = f"{source}.{a.name}"
                if private(a.name):
                    found.append(f"line {node.lineno}: from {source} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("finetune_kit") and a.asname:
                    bound[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and private(node.attr)):
            found.append(f"line {node.lineno}: {bound[node.value.id]}.{node.attr}")
    return found


def _local_imports_without_reason(path: Path) -> list[str]:
    """Imports inside a function with no comment saying why: a comment on the import's lines,
    or a comment line right above it, or right above the run of imports it belongs to (one
    comment may explain a block of local imports)."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source, filename=str(path))

    def comment(lineno: int) -> str:
        """The comment text of line ``lineno`` (1-based), ``noqa``/``type:`` markers dropped."""
        text = lines[lineno - 1]
        if "#" not in text:
            return ""
        tokens = io.StringIO(text + "\n")
        try:
            found = [t.string for t in tokenize.generate_tokens(tokens.readline) if t.type == tokenize.COMMENT]
        except (tokenize.TokenError, IndentationError, SyntaxError):
            found = [text[text.index("#"):]]
        words = " ".join(found).lstrip("#").strip()
        words = re.sub(r"(noqa(:\s*[A-Z0-9, ]+)?|type:\s*ignore(\[[^\]]*\])?)", "", words).strip(" #:()")
        return words

    offenders: list[str] = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for body in _statement_lists(fn):
            justified_block = False
            previous_import = False
            for stmt in body:
                is_import = isinstance(stmt, (ast.Import, ast.ImportFrom))
                if not is_import:
                    previous_import = justified_block = False
                    continue
                own = any(comment(n) for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
                above = stmt.lineno > 1 and lines[stmt.lineno - 2].strip().startswith("#") and comment(stmt.lineno - 1)
                justified = own or bool(above) or (previous_import and justified_block)
                if not justified:
                    names = ", ".join(a.name for a in stmt.names)
                    what = f"from {'.' * stmt.level}{stmt.module or ''} import {names}" \
                        if isinstance(stmt, ast.ImportFrom) else f"import {names}"
                    offenders.append(f"line {stmt.lineno} in {fn.name}(): {what}")
                previous_import, justified_block = True, justified
    return offenders


def _statement_lists(fn: ast.AST):
    """Every list of statements inside ``fn`` (its body, branches, loops, with/try blocks), not
    descending into nested functions or classes (they are visited on their own)."""
    stack = [fn]
    while stack:
        node = stack.pop()
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(node, name, None)
            if not isinstance(block, list):
                continue
            if block and isinstance(block[0], ast.stmt):
                yield block
            for child in block:
                if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                    stack.append(child)


def _report(title: str, offenders: dict[str, list[str]]) -> str:
    lines = [f"{title} ({sum(map(len, offenders.values()))} in {len(offenders)} module(s)):"]
    for where, items in sorted(offenders.items()):
        lines += [f"  {where}: {item}" for item in items]
    return "\n".join(lines)


@pytest.mark.parametrize("area", _areas())
def test_task_imports_form_no_cycle(area):
    """No import cycle among tasks/ modules, counting imports inside functions (a lazy import
    hides a cycle from Python, not from a reader). A cycle belongs to the area of its first module."""
    cycles = [c for c in _cycles(_import_graph(_task_modules())) if _area(c[0]) == area]
    assert not cycles, f"{len(cycles)} import cycle(s) in tasks/ ({area}); break each by moving the shared " \
        "code below both modules:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)


@pytest.mark.parametrize("area", _areas())
def test_tasks_import_no_private_name_across_modules(area):
    """A name starting with ``_`` is its module's own: another module neither imports it nor
    reaches it through the module (make it public, or move the caller next to it)."""
    modules = _task_modules()
    offenders = {str(p.relative_to(REPO)): found for m, p in modules.items()
                 if _area(m) == area and (found := _private_imports(p, m, modules))}
    assert not offenders, _report(f"private names imported across modules in tasks/ ({area})", offenders)


@pytest.mark.parametrize("area", _areas())
def test_local_imports_in_task_modules_say_why(area):
    """Outside the command-line layer (:func:`_is_cli_module`), imports are at module level; an
    import inside a function needs a comment on its line or right above saying why (a heavy
    optional dependency, start-up time)."""
    offenders = {str(p.relative_to(REPO)): found for m, p in _task_modules().items()
                 if _area(m) == area and not _is_cli_module(p) and (found := _local_imports_without_reason(p))}
    assert not offenders, _report(f"imports inside functions without a reason in tasks/ ({area}); move them to "
                                  "module level or say why on the line (heavy optional dependency, start-up time)",
                                  offenders)


def test_task_checks_see_planted_offenders(tmp_path, monkeypatch):
    """The tasks/ walkers are not vacuous: a planted cycle through a lazy import, a private name
    imported and reached, and an unexplained local import are all reported, in one message each."""
    pkg = tmp_path / "tasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from finetune_kit.tasks.b import x\n\n\ndef y():\n    return x\n")
    (pkg / "b.py").write_text(
        "from finetune_kit.tasks import c\nfrom finetune_kit.tasks.c import _hidden\n\n\ndef x():\n"
        "    import json\n    from finetune_kit.tasks import a\n    return c._helper, a, json, _hidden\n\n\n"
        "def ok():\n    # torch is heavy: loaded on first use\n    import torch\n    import torch.nn\n"
        "    import numpy  # start-up time\n    return torch, numpy\n")
    (pkg / "c.py").write_text("_hidden = 1\n\n\ndef _helper():\n    return 1\n")
    (pkg / "cli.py").write_text("def cmd():\n    import json\n    return json\n")
    monkeypatch.setattr(sys.modules[__name__], "TASKS", pkg)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    with pytest.raises(AssertionError, match="finetune_kit.tasks.a -> finetune_kit.tasks.b -> finetune_kit.tasks.a"):
        test_task_imports_form_no_cycle("tasks")
    with pytest.raises(AssertionError) as private:
        test_tasks_import_no_private_name_across_modules("tasks")
    assert "from finetune_kit.tasks.c import _hidden" in str(private.value)
    assert "finetune_kit.tasks.c._helper" in str(private.value)
    with pytest.raises(AssertionError) as local:
        test_local_imports_in_task_modules_say_why("tasks")
    text = str(local.value)
    assert "tasks/b.py: line 6 in x(): import json" in text and "line 7 in x(): from finetune_kit.tasks import a" in text
    assert "torch" not in text and "numpy" not in text and "cli.py" not in text  # explained, or the CLI layer
