"""Run records: finetune-kit version, git commit of the checkout, fingerprints of data and weights."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from finetune_kit.runs.run_dir import RunDir, fingerprint, fingerprint_inputs, git_info

REPO = Path(__file__).resolve().parents[3]


def test_folder_fingerprint_follows_the_file_list_sizes_and_mtimes(tmp_path):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "a" / "x.png").write_bytes(b"123")
    (data / "y.png").write_bytes(b"45")
    first = fingerprint(data)
    assert first["kind"] == "folder" and first["files"] == 2 and first["bytes"] == 5
    assert fingerprint(data) == first  # deterministic
    os.utime(data / "y.png", ns=(1, 1))  # touched: another fingerprint
    touched = fingerprint(data)
    assert touched["sha256"] != first["sha256"]
    (data / "z.png").write_bytes(b"")
    assert fingerprint(data)["sha256"] != touched["sha256"] and fingerprint(data)["files"] == 3
    assert fingerprint(tmp_path / "nope")["kind"] == "missing"


def test_file_fingerprint_is_the_content_sha256(tmp_path):
    w = tmp_path / "weights.pth"
    w.write_bytes(os.urandom(3 << 20))  # several read chunks
    fp = fingerprint(w)
    assert fp == {"path": str(w.resolve()), "kind": "file", "bytes": 3 << 20,
                  "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
    assert set(fingerprint_inputs({"weights": w, "data": None, "split": ""})) == {"weights"}


def test_environment_records_version_commit_and_inputs(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "img.png").write_bytes(b"x")
    w = tmp_path / "w.pt"
    w.write_bytes(b"weights")
    run = RunDir(tmp_path / "run")
    run.start({"a": 1}, inputs={"data": tmp_path / "d", "weights": w, "checkpoint": None})
    env = json.loads((run.path / "environment.json").read_text())
    from importlib.metadata import version

    assert env["finetune_kit"] == version("finetune-kit")
    assert env["inputs"]["data"]["files"] == 1 and env["inputs"]["weights"]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert "checkpoint" not in env["inputs"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0 and (REPO / ".git").exists():  # run from a checkout
        assert env["git"]["commit"] == head.stdout.strip() and isinstance(env["git"]["dirty"], bool)


def test_git_info_is_none_outside_a_checkout(tmp_path):
    assert git_info(tmp_path) is None
    subprocess.run(["git", "init", "-q", str(tmp_path / "repo")], check=True)
    (tmp_path / "repo" / "pkg").mkdir()
    (tmp_path / "repo" / "pkg" / "m.py").write_text("x = 1\n")
    assert git_info(tmp_path / "repo" / "pkg") is None  # untracked: e.g. site-packages in a repository's .venv
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(tmp_path / "repo"), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(tmp_path / "repo"), "commit", "-qm", "x"], check=True, env=env)
    info = git_info(tmp_path / "repo" / "pkg")
    assert len(info["commit"]) == 40 and info["dirty"] is False
    (tmp_path / "repo" / "pkg" / "m.py").write_text("x = 2\n")
    assert git_info(tmp_path / "repo" / "pkg")["dirty"] is True
