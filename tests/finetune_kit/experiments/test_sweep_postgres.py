"""Two workers share one study on a real PostgreSQL server; one is killed mid-trial.

The fixture makes a throwaway cluster (Debian's postgresql package: /usr/lib/postgresql/*/bin)
in a temporary folder and serves it on 127.0.0.1 at a free port. initdb refuses root: as root,
it runs as the system user ``fkpg`` (created when missing); otherwise as the current user.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PG_USER = "fkpg"


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg", reason="psycopg not installed: uv sync (dev group) or pip install 'finetune-kit[postgres]'")
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql; .ci/run installs it)")
    root = os.geteuid() == 0
    if root:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True)
    folder = Path(tempfile.mkdtemp(prefix="fk-pg-"))
    data = folder / "data"
    as_user = ["runuser", "-u", PG_USER, "--"] if root else []
    if root:
        shutil.chown(folder, PG_USER)
    port = _free_port()
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "fk", "--auth=trust", "-E", "UTF8"], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-t", "60", "-o",
                        f"-h 127.0.0.1 -p {port} -k {folder} -c max_connections=50", "start"], check=True,
                       capture_output=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        log = (folder / "log").read_text() if (folder / "log").is_file() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"could not start postgres: {exc.stderr.decode()[-2000:]} {log[-2000:]}")
    yield f"postgresql+psycopg://fk@127.0.0.1:{port}/postgres"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                   timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


WORKER = """
import sys; sys.path.insert(0, {tests!r})
from test_sweep import cfg, MIXED
from finetune_kit.experiments.sweep.runner import run_sweep
run_sweep(cfg({folder!r}, MIXED, method="random", trials={trials}, storage={url!r}, study="shared", heartbeat_s=1,
              grace_s=3, fixed_args=["--num_epochs", "3", "--sleep", "0.6"]), echo=print)
"""


def _worker(folder: Path, url: str, trials: int) -> subprocess.Popen:
    code = WORKER.format(tests=str(Path(__file__).parent), folder=str(folder), url=url, trials=trials)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_workers_share_a_study_and_a_killed_workers_trial_is_retried(postgres_url, tmp_path):
    import optuna

    trials = 6
    a, b = _worker(tmp_path / "a", postgres_url, trials), _worker(tmp_path / "b", postgres_url, trials)
    a_dir = str((tmp_path / "a" / "sweep").resolve())
    study, victim, deadline = None, None, time.time() + 120
    while time.time() < deadline and victim is None:  # kill a mid-trial, once it has finished one
        time.sleep(0.3)
        try:
            study = study or optuna.load_study(study_name="shared", storage=postgres_url)
        except KeyError:
            continue
        mine = [t for t in study.get_trials() if t.user_attrs.get("run_dir", "").startswith(a_dir)]
        if any(t.state.name == "COMPLETE" for t in mine):
            running = [t for t in mine if t.state.name == "RUNNING" and t.intermediate_values]
            victim = running[0] if running else None
    if victim is None:
        a.kill(), b.kill()
        pytest.fail(f"worker a never ran a second trial: {a.communicate()[0][-2000:]}")
    finished_before = {t.number for t in study.get_trials() if t.state.name == "COMPLETE"}
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=30)
    out = b.communicate(timeout=180)[0]
    assert b.returncode == 0, out[-3000:]
    done = study.get_trials()
    by_state = {s: [t for t in done if t.state.name == s] for s in ("COMPLETE", "FAIL", "RUNNING", "WAITING")}
    assert [t.number for t in by_state["FAIL"]] == [victim.number], [(t.number, t.state) for t in done]
    assert not by_state["RUNNING"] and not by_state["WAITING"]
    assert len(by_state["COMPLETE"]) == trials and len(done) == trials + 1
    retry = [t for t in done if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == victim.params
    assert str(tmp_path / "b") in retry[0].user_attrs["run_dir"]  # the survivor re-ran it
    from finetune_kit.runs.status import recorded_status

    status, reason = recorded_status(victim.user_attrs["run_dir"])
    assert status == "failed" and "worker running trial" in reason and "died" in reason
    assert finished_before <= {t.number for t in by_state["COMPLETE"]}  # no finished trial lost
    for t in by_state["COMPLETE"]:  # every trial ran exactly once: one run folder per trial
        tag_dir = Path(t.user_attrs["run_dir"]).parent
        assert [p.name for p in tag_dir.iterdir()] == [Path(t.user_attrs["run_dir"]).name]
        assert (Path(t.user_attrs["run_dir"]) / "metrics.json").is_file()
    ran = {p.name for w in ("a", "b") for p in (tmp_path / w / "sweep" / "trials").iterdir()}
    assert ran == {f"trial-{t.number:04d}" for t in done}
    assert {t.user_attrs["run_dir"].startswith(a_dir) for t in by_state["COMPLETE"]} == {True, False}
