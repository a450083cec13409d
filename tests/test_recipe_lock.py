"""One `bitdistill run` per run directory: a live holder refuses a second run, a dead one's lock is taken
over, and the lock is released on every exit (Ctrl-C included)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bitdistill.cli import main
from bitdistill.errors import BitDistillError
from bitdistill.pipeline import run as run_module
from bitdistill.pipeline.lock import LOCK_FILE, RunLock
from tiny_pipeline import build_world

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def recipe(world, tmp_path) -> Path:
    data = yaml.safe_load(CONFIG.read_text())
    data.update(model=str(world["model"]), output_dir=str(tmp_path / "run"))
    data["task"]["path"] = str(world["data"])
    data["continue_pretrain"]["corpus"]["sources"] = [str(world["corpus"])]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_lock(run: Path, pid: int) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    lock = run / LOCK_FILE
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 1e9}))
    return lock


@pytest.fixture
def no_training(monkeypatch):
    """The stages themselves are not under test here: record that the run got past the lock."""
    calls = []

    def fake(recipe, only, ablations, restart_flag=None):
        calls.append((recipe.out / LOCK_FILE).is_file())
        return {}

    monkeypatch.setattr(run_module, "_execute", fake)
    return calls


def test_a_live_holder_refuses_a_second_run(recipe, tmp_path, capsys, no_training):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = write_lock(tmp_path / "run", holder.pid)
        assert main(["run", str(recipe)]) == 2
        err = capsys.readouterr().err.splitlines()[-1]
        assert f"another bitdistill run is using this run directory (pid {holder.pid} on" in err
        assert f"delete {lock}" in err
        assert no_training == [] and json.loads(lock.read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holder_lock_is_taken_over(recipe, tmp_path, capsys, no_training):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = write_lock(tmp_path / "run", gone.pid)
    assert main(["run", str(recipe)]) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of a run that is gone (pid {gone.pid}" in err
    assert no_training == [True]  # the run held the lock while it ran
    assert not lock.exists()  # and released it


def test_two_holders_in_one_process(tmp_path):
    """The flock itself: a second open of the same lock (as by another process) is refused."""
    with RunLock(tmp_path):
        owner = json.loads((tmp_path / LOCK_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(BitDistillError, match=f"pid {os.getpid()} on"), RunLock(tmp_path):
            pass
    assert not (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path):  # free again
        pass


def test_ctrl_c_releases_the_lock(recipe, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        assert (tmp_path / "run" / LOCK_FILE).is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "_execute", interrupted)
    assert main(["run", str(recipe)]) == 130
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_killed_run_leaves_a_lock_the_next_run_takes_over(recipe, tmp_path):
    """SIGKILL skips every cleanup: the file stays, the kernel drops the flock, the PID is dead."""
    code = (
        "import os, signal, sys; from bitdistill.pipeline.lock import RunLock; "
        f"RunLock({str(tmp_path / 'run')!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert proc.returncode < 0 and (tmp_path / "run" / LOCK_FILE).is_file()
    with RunLock(tmp_path / "run"):
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_check_takes_no_lock(recipe, tmp_path):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        write_lock(tmp_path / "run", holder.pid)
        assert main(["run", str(recipe), "--check"]) == 0  # reading is safe beside a running run
    finally:
        holder.kill()
        holder.wait()


def test_a_stage_command_locks_its_out_directory(world, tmp_path, capsys, monkeypatch):
    # `bitdistill teacher|sft|pretrain|distill --out DIR` writes checkpoints into DIR like a run does, so a
    # second command on the same DIR is refused, before anything trains.
    trained = []
    monkeypatch.setattr(run_module, "run_stage", lambda *a, **k: trained.append(a) or {})
    out = tmp_path / "teacher"
    argv = ["teacher", "--model", str(world["model"]), "--data", str(world["data"]), "--out", str(out),
            "--steps", "1"]  # fmt: skip
    holder = subprocess.Popen(["sleep", "60"])
    try:
        write_lock(out, holder.pid)
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()[-1]
        assert f"{out}: another bitdistill run is using this run directory (pid {holder.pid} on" in err
        assert trained == []
    finally:
        holder.kill()
        holder.wait()
    (out / LOCK_FILE).unlink()
    monkeypatch.setattr(run_module, "evaluate_stage", lambda *a, **k: {})
    assert main(argv) == 0 and len(trained) == 1
    assert not (out / LOCK_FILE).exists()  # released at the end
