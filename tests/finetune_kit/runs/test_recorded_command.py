"""The command that made a run is recorded in its folder and read back (``rerun`` uses it)."""
from __future__ import annotations

import json

from finetune_kit.runs.run_dir import RunDir, recorded_command


def test_start_records_the_command_and_it_reads_back(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({"lmbda": 0.0018}, command="compress finetune")
    assert json.loads((run.path / "environment.json").read_text())["command"] == "compress finetune"
    assert recorded_command(run.path) == "compress finetune"


def test_folders_without_a_recorded_command_give_none(tmp_path):
    old = RunDir(tmp_path / "old")
    old.start({"ft_strategy": "full"})  # as written before the command was recorded
    assert "command" not in json.loads((old.path / "environment.json").read_text())
    assert recorded_command(old.path) is None
    assert recorded_command(tmp_path / "missing") is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "environment.json").write_text("{not json")
    assert recorded_command(tmp_path / "broken") is None
