"""Every ``finetune-kit`` / ``train_classification.py`` command line in README.md and docs/*.md parses
with the real command: each option it types exists, takes the value given, and a choice is one of
the choices. A renamed or removed option makes this fail, so the manuals cannot drift from the code.

Synopsis lines (``[--metric M]``, ``a|b``, ``...``) are skipped; shell variables set in the same
block (``COMMON="..."``, ``B=...``) are expanded; a ``sweep`` command's fixed task options after
``--`` are parsed by that task's command too.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from finetune_kit.tasks.classification.cli import classify_app
from finetune_kit.tasks.cli import app

REPO = Path(__file__).resolve().parents[1]
MANUALS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_PROGRAM = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:\S*/)?(?:finetune-kit|python3? train_classification\.py)\s")
_SYNOPSIS = re.compile(r"\[--|\w\|\w|\.\.\.|<\w+>")
#: ``sweep --task`` -> the command path whose options come after ``--``
_SWEEP_TASKS = {"classification": ["classify"], "compression-train": ["compress", "train"],
                "compression-finetune": ["compress", "finetune"]}


def _shell_blocks(text: str) -> list[str]:
    """The fenced blocks of a Markdown text tagged bash/sh/console or untagged, in order."""
    blocks, current, lang = [], None, ""
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence and current is None:
            current, lang = [], fence.group(1)
        elif fence:
            if lang in ("", "bash", "sh", "console"):
                blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _command_lines() -> list[tuple[str, str]]:
    """``(where, command line)`` of every documented command (continuations joined, comments dropped)."""
    out = []
    for path in MANUALS:
        for block in _shell_blocks(path.read_text()):
            text = re.sub(r"\\\n\s*", " ", block)
            env: dict[str, str] = {}
            for n, line in enumerate(text.splitlines()):
                line = line.split(" # ")[0].strip()
                assign = re.match(r"^([A-Z][A-Z0-9_]*)=(\"[^\"]*\"|\S+)$", line)
                if assign:
                    env[assign.group(1)] = assign.group(2).strip('"')
                    continue
                if not _PROGRAM.match(line):
                    continue
                line = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), line)
                if not _SYNOPSIS.search(line):
                    out.append((f"{path.name}:{line[:60]}", line))
    return out


COMMANDS = _command_lines()


def _resolve(words: list[str]):
    """The click command a documented line names and the arguments left for it (typer brings its own
    copy of click, so groups are told by duck typing)."""
    if words and words[0].endswith("train_classification.py"):
        return typer.main.get_command(classify_app()), words[1:]
    cmd = typer.main.get_command(app)
    words = words[1:]
    while hasattr(cmd, "commands"):
        name, words = words[0], words[1:]
        cmd = cmd.commands[name]
    return cmd, words


def _words(line: str) -> list[str]:
    words = shlex.split(line)
    while re.match(r"^[A-Z_]+=", words[0]):  # OMP_NUM_THREADS=1 finetune-kit ...
        words = words[1:]
    if words[0].endswith("python") or words[0].endswith("python3"):
        words = words[1:]
    return words


def test_the_manuals_document_commands():
    names = {line.split()[1] for _, line in COMMANDS if "finetune-kit" in line.split()[0]}
    assert {"compare", "predict", "evaluate", "compress", "sweep", "analyze"} <= names
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("line", [pytest.param(line, id=where) for where, line in COMMANDS])
def test_documented_command_parses(line):
    cmd, args = _resolve(_words(line))
    task_args: list[str] = []
    if "--" in args:  # sweep -- <fixed task options>
        i = args.index("--")
        args, task_args = args[:i], args[i + 1:]
    assert not hasattr(cmd, "commands"), f"{line}: names a group, not a command"
    try:
        ctx = cmd.make_context(cmd.name or "cmd", list(args))
    except Exception as exc:  # click's UsageError (typer's copy of click): an option that does not exist ...
        pytest.fail(f"{line}\n  -> {getattr(exc, 'format_message', exc.__str__)()}")
    if task_args:
        task, _ = _resolve(["finetune-kit", *_SWEEP_TASKS[ctx.params["task"]]])
        try:
            task.make_context(task.name or "task", task_args)
        except Exception as exc:
            pytest.fail(f"{line}\n  task options -> {getattr(exc, 'format_message', exc.__str__)()}")
