"""`python -m train run --recipe` from a terminal: checked before a run folder exists, then a run that `runs`
sees as live, can stop, refuses to resume while it trains, and whose output is in log.txt; overrides stay text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_launcher import _wait_until

from captionlab.training import launcher, runs_db
from captionlab.training.config import resolve_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = (tmp_path / "home").resolve()
    home.mkdir()
    monkeypatch.setenv("CAPTIONLAB_HOME", str(home))
    return home


def train_main(argv):
    from train.__main__ import main

    return main(argv)


def test_override_text_stays_text():
    """`yaml.safe_load` made `prompt=Describe the image: briefly.` a mapping and trained on its repr."""
    config = resolve_config("embedded/lora", ["prompt=Describe the image: briefly.", "name=a: b", "lr_max=1e-3",
                                              "max_grad_norm=null", "epochs=2"])
    assert config.prompt == "Describe the image: briefly." and config.name == "a: b"
    assert config.lr_max == 0.001 and config.max_grad_norm is None and config.epochs == 2


def test_missing_weights_or_data_fail_before_a_run_exists(home, tiny_llava_dir, tiny_world, capsys):
    # the 7B weights are not on this machine: one line that says how to get them, and `model=DIR` for this command
    assert train_main(["run", "--recipe", "llava-1.5-7b/lora", "dataset=karpathy:/nonexistent/x.json"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: weights for 'llava-1.5-7b'") and "model=DIR" in error and "\n" not in error
    # the weights are there, the annotation file is not: said before any model loads
    assert train_main(["run", "--recipe", "embedded/lora", f"model={tiny_llava_dir}",
                       "dataset=karpathy:/nonexistent/x.json"]) == 2
    assert "annotation file not found: /nonexistent/x.json" in capsys.readouterr().err
    assert train_main(["run", "--recipe", "embedded/lora", f"model={tiny_llava_dir}", f"datasets_config={tiny_world}",
                       "images=/nonexistent/images"]) == 2
    assert "image folder not found: /nonexistent/images" in capsys.readouterr().err
    assert runs_db.list_runs() == []
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_a_run_started_from_a_terminal_is_live_stoppable_and_logged(home, tmp_path, tiny_llava_dir, tiny_world):
    command = [sys.executable, "-m", "train", "run", "--recipe", "embedded/lora", f"model={tiny_llava_dir}",
               f"datasets_config={tiny_world}", "dataset=coco", "epochs=50", "max_train_images=8",
               "max_val_images=4", "checkpoint_every_steps=2", "name=terminal"]
    terminal = (tmp_path / "terminal.txt").open("w")
    process = subprocess.Popen(command, cwd=ROOT, stdout=terminal, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    try:
        row = _wait_until(lambda: next(iter(runs_db.list_runs()), None), timeout=120, interval=0.2)  # registered
        run_dir = Path(row["run_dir"])
        # registered by the trainer itself (the same pid: `--recipe` hands over to `--run-dir` by exec)
        assert row["pid"] == process.pid and row["pgid"] is None and row["state"] == "running"
        _wait_until(lambda: json.loads((run_dir / "status.json").read_text()).get("step", 0) >= 3
                    if (run_dir / "status.json").exists() else False, timeout=180, interval=0.2)  # three steps
        launcher.refresh_runs()
        assert runs_db.get_run(row["run_id"])["state"] == "running"  # alive: not marked crashed
        with pytest.raises(launcher.LaunchError, match=rf"already being trained by pid {process.pid}\b"):
            launcher.resume_run(row["run_id"])  # a second trainer in the same folder is refused, naming the live one
        stopped = launcher.stop_run(row["run_id"], grace_s=60)
        assert stopped["state"] == "stopped"
        process.wait(timeout=30)  # gone; its exit status is not ours to read (stop_run reaped the pid it watched),
        # so what the trainer wrote says how it left: checkpointed and stopped on the signal
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "stopped" and (run_dir / "last").is_dir()
        log = (run_dir / "log.txt").read_text()
        assert f"run folder: {run_dir}" in log and "stop requested: checkpointed at step" in log
        assert "stop requested" in (tmp_path / "terminal.txt").read_text()  # and the terminal still saw it all
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        terminal.close()


def test_the_processes_of_a_distributed_launch_share_one_run_folder(home, monkeypatch):
    """Under `accelerate launch --num_processes N -m train run --recipe ...` every process parses the recipe;
    rank 0 alone creates the folder and the others take its path (each made its own folder before)."""
    from train.__main__ import shared_run_folder

    config = resolve_config("embedded/lora", ["name=ddp"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", "29511")
    monkeypatch.setenv("RANK", "0")
    first = shared_run_folder(config)
    monkeypatch.setenv("RANK", "1")
    assert shared_run_folder(config, wait_s=5) == first
    assert [p.name for p in (home / "runs").iterdir() if not p.name.startswith(".")] == [first.name]
    monkeypatch.setenv("MASTER_PORT", "29512")  # another launch: no note from its rank 0, a clear error
    with pytest.raises(RuntimeError, match="rank 0 did not create the run folder"):
        shared_run_folder(config, wait_s=0.5)
