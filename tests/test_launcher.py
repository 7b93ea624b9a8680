"""The launcher and the runs registry, driven with a fake trainer (tests/fixtures/fake_trainer.py):
launch without a shell, watch progress, stop the whole process group, resume, notice a crash.

The config validator is replaced by a stand-in, so these tests do not depend on the real recipes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from captionlab import paths, processes
from captionlab.training import launcher, runs_db
from captionlab.training.run_folder import RunFolder

FAKE_TRAINER = [sys.executable, str(Path(__file__).parent / "fixtures" / "fake_trainer.py")]


def fake_resolve(recipe, overrides):
    """Stand-in for the real validator: flat key=value overrides onto a small config."""
    config = {"model": "tiny", "strategy": "lora", "dataset": "world", "fake_steps": 5, "fake_sleep_s": 0.02}
    for item in overrides:
        if "=" not in item:
            raise launcher.LaunchError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        config[key] = yaml.safe_load(value)
    return config, f"{config['model']}-{config['strategy']}"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """CAPTIONLAB_HOME in tmp_path, the stand-in validator; afterwards no process is left running."""
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path))
    monkeypatch.setattr(launcher, "resolve_recipe", fake_resolve)
    yield tmp_path
    for row in runs_db.list_runs():
        if row["pgid"] and launcher._group_is_ours(row["pid"], row["pgid"], row["run_dir"]):
            os.killpg(row["pgid"], signal.SIGKILL)
        child = _child_pid(row)
        if child and _alive(child) and b"time.sleep(120)" in Path(f"/proc/{child}/cmdline").read_bytes():
            os.kill(child, signal.SIGKILL)
        process = launcher._children.pop(row["pid"], None)
        if process is not None:
            process.wait(timeout=5)


def launch(*overrides: str, **kwargs) -> launcher.RunInfo:
    return launcher.launch_run("recipe.yaml", list(overrides), trainer_cmd=FAKE_TRAINER, **kwargs)


def _wait_until(predicate, timeout: float = 60.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def wait_for_state(run_id: str, state: str, timeout: float = 60.0) -> dict:
    def reached():
        launcher.refresh_runs()
        row = runs_db.get_run(run_id)
        return row if row["state"] == state else None
    return _wait_until(reached, timeout)


def wait_for_step(info: launcher.RunInfo, step: int) -> dict:
    folder = RunFolder(info.run_dir)
    return _wait_until(lambda: (s := folder.read_status()).get("state") == "running" and s.get("step", 0) >= step
                       and (info.run_dir / "child.pid").exists() and s)


def _child_pid(row: dict) -> int | None:
    try:
        return json.loads((Path(row["run_dir"]) / "child.pid").read_text())["pid"]
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    stat = processes.proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


# --- the registry --------------------------------------------------------------------------------


def test_runs_db_register_update_get_list(workspace):
    runs_db.register_run("a-1", name="a", run_dir=workspace / "a-1", strategy="lora", launch_spec={"gpus": 2})
    time.sleep(0.01)
    runs_db.register_run("b-1", name="b", run_dir=workspace / "b-1", backend="slurm")
    row = runs_db.update_run("a-1", state="running", pid=123, pgid=123)
    assert (row["state"], row["pid"], row["launch_spec"]) == ("running", 123, {"gpus": 2})
    assert row["updated_at"] >= row["created_at"]
    assert [r["run_id"] for r in runs_db.list_runs()] == ["b-1", "a-1"]
    assert runs_db.get_run("nope") is None
    with pytest.raises(ValueError, match="created_at"):
        runs_db.update_run("a-1", created_at=0)
    with pytest.raises(runs_db.UnknownRunError):
        runs_db.update_run("nope", state="running")
    assert paths.database_path().parent == workspace


# --- launching -----------------------------------------------------------------------------------


def test_trainer_command_is_an_argv_list():
    run_dir = Path("/runs/x")
    assert launcher.trainer_command(run_dir) == [sys.executable, "-m", "train", "run", "--run-dir", "/runs/x"]
    assert launcher.trainer_command(run_dir, gpus=4, resume=True) == [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4", "-m", "train", "run",
        "--run-dir", "/runs/x", "--resume"]
    assert launcher.trainer_command(run_dir, trainer_cmd=["fake"]) == ["fake", "--run-dir", "/runs/x"]


def test_preview_command_is_a_quoted_shell_line():
    line = launcher.preview_command("train/recipes/lora.yaml", ["lr_max=0.02", "name=my run"], gpus=2)
    assert line == "python -m captionlab runs launch train/recipes/lora.yaml lr_max=0.02 'name=my run' --gpus 2"


def test_sanitize_run_name():
    assert launcher.sanitize_run_name("x; rm -rf ~ && echo $HOME") == "x-rm-rf-echo-HOME"
    assert launcher.sanitize_run_name("llava-1.5_lora") == "llava-1-5_lora"
    assert launcher.sanitize_run_name("../..") == "run"
    assert len(launcher.sanitize_run_name("a" * 500)) == 64


def test_bad_input_is_rejected_before_anything_starts(workspace):
    with pytest.raises(launcher.LaunchError, match="not of the form key=value"):
        launch("epochs")
    assert runs_db.list_runs() == [] and list(paths.runs_dir().iterdir()) == []
    with pytest.raises(launcher.LaunchError, match="gpus"):
        launch(gpus=0)


def test_resolve_recipe_surfaces_the_validators_message(monkeypatch):
    import types

    fake_config = types.ModuleType("captionlab.training.config")

    def resolve_config(recipe, overrides):
        raise ValueError("epochs: must be at least 1 (got 0)")

    fake_config.resolve_config = resolve_config
    monkeypatch.setitem(sys.modules, "captionlab.training.config", fake_config)
    with pytest.raises(launcher.LaunchError, match=r"^epochs: must be at least 1 \(got 0\)$"):
        launcher.resolve_recipe("recipe.yaml", ["epochs=0"])


def test_launch_runs_to_finish_and_writes_the_run_folder(workspace):
    info = launch("fake_steps=5", name="quick")
    assert re.fullmatch(r"quick-\d{8}-\d{6}", info.run_id) and info.run_dir.parent == paths.runs_dir()
    assert info.pgid == info.pid and info.command[-2:] == ["--run-dir", str(info.run_dir)]
    row = wait_for_state(info.run_id, "finished")
    assert (row["name"], row["strategy"], row["model"], row["backend"], row["pid"]) == (
        "quick", "lora", "tiny", "local", info.pid)
    folder = RunFolder(info.run_dir)
    assert folder.read_config()["fake_steps"] == 5
    assert [m["step"] for m in folder.read_metrics()] == [1, 2, 3, 4, 5]
    assert "fake trainer: steps 1..5" in folder.log_tail()
    listed = launcher.list_runs_with_status()[0]
    assert (listed["state"], listed["step"], listed["total_steps"], listed["best_val_loss"]) == (
        "finished", 5, 5, 0.2)
    assert listed["energy_method"] == "estimate" and listed["energy_kwh"] == pytest.approx(5e-5)


def test_no_shell_is_used(workspace, monkeypatch):
    calls = []
    real_popen = subprocess.Popen

    def spy(args, **kwargs):
        calls.append((args, kwargs))
        return real_popen(args, **kwargs)

    monkeypatch.setattr(launcher.subprocess, "Popen", spy)
    marker = workspace / "PWNED"
    info = launch("fake_steps=2", name=f"x; touch {marker}; rm -rf {workspace}/runs")
    wait_for_state(info.run_id, "finished")
    (args, kwargs), = calls
    assert isinstance(args, list) and not kwargs.get("shell", False)
    assert kwargs["start_new_session"] and kwargs["env"]["PYTHONUNBUFFERED"] == "1"
    assert kwargs["cwd"] == paths.PROJECT_ROOT and kwargs["stderr"] == subprocess.STDOUT
    assert re.fullmatch(r"[A-Za-z0-9_-]+", info.run_id) and info.run_dir.exists()
    assert not marker.exists()


# --- stop, resume, crash -------------------------------------------------------------------------


def test_stop_ends_the_whole_process_group(workspace):
    info = launch("fake_steps=1000")
    wait_for_step(info, 1)
    child = _child_pid({"run_dir": info.run_dir})
    assert _alive(info.pid) and _alive(child)
    row = launcher.stop_run(info.run_id, grace_s=3)
    assert row["state"] == "stopped"
    assert not _alive(info.pid) and not _alive(child)
    assert RunFolder(info.run_dir).read_status()["state"] == "stopped"
    with pytest.raises(launcher.LaunchError, match="not running"):
        launcher.stop_run(info.run_id)


def test_resume_continues_from_the_last_checkpoint(workspace):
    info = launch("fake_steps=30", "fake_sleep_s=0.05")
    wait_for_step(info, 4)
    launcher.stop_run(info.run_id, grace_s=3)
    folder = RunFolder(info.run_dir)
    saved = json.loads((folder.last_dir / "trainer_state.json").read_text())["step"]
    resumed = launcher.resume_run(info.run_id)
    assert resumed.command[-1] == "--resume" and resumed.pid != info.pid
    wait_for_state(info.run_id, "finished")
    steps = [m["step"] for m in folder.read_metrics()]
    assert steps[-(30 - saved):] == list(range(saved + 1, 31))  # picked up right after the checkpoint
    assert f"steps {saved + 1}..30, resume=True" in folder.log_tail()
    assert folder.read_status()["resumed"] is True
    assert folder.log_tail().count("[launcher") == 2
    with pytest.raises(launcher.LaunchError, match="only a stopped, crashed or failed run"):
        launcher.resume_run(info.run_id)


def test_resume_needs_a_complete_checkpoint(workspace):
    info = launch("fake_steps=1000", "fake_checkpoint_every=100000")
    wait_for_step(info, 1)
    launcher.stop_run(info.run_id, grace_s=3)
    with pytest.raises(launcher.LaunchError, match="no complete checkpoint"):
        launcher.resume_run(info.run_id)
    with pytest.raises(launcher.LaunchError, match="no run with id"):
        launcher.resume_run("nope")


def test_an_externally_killed_run_is_marked_crashed(workspace):
    info = launch("fake_steps=1000")
    wait_for_step(info, 1)
    os.killpg(info.pgid, signal.SIGKILL)
    row = wait_for_state(info.run_id, "crashed")
    assert "ended without finishing" in row["message"]
    assert RunFolder(info.run_dir).read_status()["state"] == "crashed"


def test_a_failing_trainer_is_recorded_as_failed(workspace):
    info = launch("fake_steps=10", "fake_fail_at=2")
    row = wait_for_state(info.run_id, "failed")
    assert row["message"] == "fake failure at step 2"


def test_refresh_spots_a_reused_pid_and_syncs_finished_runs(workspace):
    for run_id, state in (("reused", "running"), ("done", "finished")):
        folder = RunFolder(workspace / run_id)
        folder.path.mkdir()
        folder.write_status(state=state, message="all good" if state == "finished" else "")
        # our own pid: alive, but its command line does not name the run folder
        runs_db.register_run(run_id, name=run_id, run_dir=folder.path, state="running", pid=os.getpid())
    changed = {row["run_id"]: row for row in launcher.refresh_runs()}
    assert changed["reused"]["state"] == "crashed" and changed["done"]["state"] == "finished"
    assert changed["done"]["message"] == "all good"
    assert launcher.refresh_runs() == []


def test_slurm_without_sbatch_is_a_clear_error(workspace, monkeypatch):
    monkeypatch.setenv("PATH", str(workspace / "empty-bin"))
    with pytest.raises(launcher.LaunchError, match="sbatch"):
        launcher.submit_slurm("recipe.yaml", [], partition="gpu")
    assert runs_db.list_runs() == []


# --- one live trainer per run folder (issue 17.2) ------------------------------------------------


def test_two_resumes_at_once_start_one_trainer(workspace, monkeypatch):
    import threading

    info = launch("fake_steps=40", "fake_sleep_s=0.05")
    wait_for_step(info, 4)
    launcher.stop_run(info.run_id, grace_s=3)
    both_checked = threading.Barrier(2, timeout=30)
    refresh = launcher.refresh_runs

    def refresh_then_meet():  # both resumes have looked at the run before either starts a trainer
        changed = refresh()
        both_checked.wait()
        return changed

    monkeypatch.setattr(launcher, "refresh_runs", refresh_then_meet)
    answers: list = []

    def resume():
        try:
            answers.append(launcher.resume_run(info.run_id))
        except launcher.LaunchError as exc:
            answers.append(exc)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    started = [a for a in answers if isinstance(a, launcher.RunInfo)]
    refused = [str(a) for a in answers if isinstance(a, launcher.LaunchError)]
    assert len(started) == 1 and len(refused) == 1, answers
    assert re.search(r"already being trained by pid \d+", refused[0]), refused[0]
    monkeypatch.setattr(launcher, "refresh_runs", refresh)
    wait_for_state(info.run_id, "finished")
    assert RunFolder(info.run_dir).log_tail(400).count("[launcher") == 2  # the launch and one resume
    assert runs_db.get_run(info.run_id)["pid"] == started[0].pid


def test_resume_from_the_command_line_while_the_trainer_lives_is_refused(workspace):
    info = launch("fake_steps=1000")
    wait_for_step(info, 1)
    runs_db.update_run(info.run_id, state="stopped")  # e.g. the app's Stop timed out, the trainer lives on
    answer = subprocess.run([sys.executable, "-m", "captionlab", "runs", "resume", info.run_id],
                            capture_output=True, text=True, timeout=120)
    assert answer.returncode == 2 and "Traceback" not in answer.stderr
    assert f"already being trained by pid {info.pid}" in answer.stderr


def test_a_resume_while_the_trainer_lives_names_its_pid(workspace):
    info = launch("fake_steps=1000")
    wait_for_step(info, 1)
    runs_db.update_run(info.run_id, state="stopped")  # the registry wrong (an app's stale view): the lock decides
    with pytest.raises(launcher.LaunchError, match=rf"already being trained by pid {info.pid}\b"):
        launcher.resume_run(info.run_id)
    assert RunFolder(info.run_dir).log_tail(400).count("[launcher") == 1


def test_the_run_lock_is_freed_when_its_holder_is_killed(tmp_path):
    from captionlab.training import run_lock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from captionlab.training import run_lock; "
        f"lock = run_lock.acquire({str(tmp_path)!r}); print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True, cwd=paths.PROJECT_ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_lock.RunBusyError, match=rf"by pid {holder.pid}\b"):
            run_lock.acquire(tmp_path)
        assert run_lock.holder_pid(tmp_path) == holder.pid
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert run_lock.holder_pid(tmp_path) is None  # kill -9 leaves nothing stale behind
    run_lock.acquire(tmp_path).release()


def test_a_training_beyond_the_cap_waits_then_starts(workspace, monkeypatch):
    from captionlab.service import capacity

    monkeypatch.setenv(capacity.MAX_ACTIVE_ENV, "1")
    first = launch("fake_steps=1000")
    wait_for_step(first, 1)
    assert capacity.slots().trainings == 1 and capacity.slots().free == 0
    waiting = launch(start=False)
    launcher.refresh_runs()
    row = runs_db.get_run(waiting.run_id)
    assert row["state"] == "queued" and launcher.is_waiting(row)  # not taken for a crashed run
    assert capacity.slots().waiting == 1 and capacity.start_waiting() == []
    launcher.stop_run(first.run_id, grace_s=3)
    assert capacity.start_waiting() == [waiting.run_id]
    wait_for_state(waiting.run_id, "finished")
