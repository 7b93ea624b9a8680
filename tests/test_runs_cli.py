"""`python -m captionlab runs`: list, show, launch, stop and resume, on runs of the fake trainer."""

from __future__ import annotations

import functools
import json
import os
import signal

import pytest

from test_launcher import FAKE_TRAINER, _wait_until, launch, wait_for_state, wait_for_step, workspace  # noqa: F401

from captionlab.cli import main
from captionlab.training import launcher


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["runs", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_empty_list_says_how_to_start(workspace, capsys):
    code, out, _ = run_cli(capsys)
    assert code == 0 and "no runs yet" in out


def test_list_shows_progress_energy_and_crashes(workspace, capsys):
    finished = launch("fake_steps=3", name="done")
    wait_for_state(finished.run_id, "finished")
    killed = launch("fake_steps=1000", name="killed")
    wait_for_step(killed, 1)
    os.killpg(killed.pgid, signal.SIGKILL)
    _wait_until(lambda: not launcher._is_our_process(killed.pid, str(killed.run_dir)))

    code, out, _ = run_cli(capsys)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["id", "name", "strategy", "model", "state", "step", "best", "val", "energy"]
    rows = {line.split()[0]: line for line in lines}
    assert rows[finished.run_id].split()[1:7] == ["done", "lora", "tiny", "finished", "3/3", "0.3333"]
    assert rows[finished.run_id].endswith("~3e-05 kWh (estimate)")
    assert rows[killed.run_id].split()[4] == "crashed"

    code, out, _ = run_cli(capsys, "--json")
    listed = {run["run_id"]: run for run in json.loads(out)}
    assert listed[finished.run_id]["energy_method"] == "estimate" and listed[killed.run_id]["state"] == "crashed"


def test_show_by_prefix_prints_status_metrics_and_log(workspace, capsys):
    info = launch("fake_steps=2", name="showme")
    wait_for_state(info.run_id, "finished")
    code, out, _ = run_cli(capsys, "show", "showm")
    assert code == 0 and out.startswith(f"{info.run_id}  (showme)")
    assert "progress      2/2" in out and '"step": 2' in out and "fake trainer: steps 1..2" in out
    code, out, _ = run_cli(capsys, "show", info.run_id, "--json")
    shown = json.loads(out)
    assert shown["status"]["state"] == "finished" and shown["last_metrics"][-1]["step"] == 2


def test_stop_and_resume(workspace, capsys):
    info = launch("fake_steps=1000")
    wait_for_step(info, 3)
    code, out, _ = run_cli(capsys, "stop", info.run_id, "--grace", "3")
    assert code == 0 and out.strip() == f"{info.run_id}: stopped"
    code, out, _ = run_cli(capsys, "resume", info.run_id)
    assert code == 0 and out.startswith(f"resumed {info.run_id} (pid ")
    wait_for_step(info, 4)
    assert launcher.stop_run(info.run_id, grace_s=3)["state"] == "stopped"


def test_launch_from_the_command_line(workspace, capsys, monkeypatch):
    monkeypatch.setattr(launcher, "launch_run", functools.partial(launcher.launch_run, trainer_cmd=FAKE_TRAINER))
    code, out, _ = run_cli(capsys, "launch", "recipe.yaml", "fake_steps=2", "--name", "cli run; echo hi")
    assert code == 0 and out.startswith("started cli-run-echo-hi-")
    run_id = out.split()[1]
    assert wait_for_state(run_id, "finished")["name"] == "cli-run-echo-hi"


def test_user_errors_are_one_line_messages(workspace, capsys):
    code, _, err = run_cli(capsys, "show", "nope")
    assert code == 2 and err.strip() == "error: no run with id 'nope' (see `python -m captionlab runs`)"
    code, _, err = run_cli(capsys, "launch", "recipe.yaml", "epochs")
    assert code == 2 and "not of the form key=value" in err
    info = launch("fake_steps=1")
    wait_for_state(info.run_id, "finished")
    code, _, err = run_cli(capsys, "stop", info.run_id)
    assert code == 2 and "is not running (state: finished)" in err
    code, _, err = run_cli(capsys, "resume", info.run_id)
    assert code == 2 and "only a stopped, crashed or failed run" in err


def test_show_a_run_without_steps_says_none_yet(workspace, capsys):
    from captionlab.training import runs_db

    run_dir = workspace / "runs" / "fresh-1"
    run_dir.mkdir(parents=True)
    runs_db.register_run("fresh-1", name="fresh", run_dir=run_dir)
    code, out, _ = run_cli(capsys, "show", "fresh-1")
    assert code == 0 and "last metrics: none yet\n" in out and '""' not in out


# --- a damaged registry is rebuilt from the run folders; a full disk is named (issue 17.5) --------------------


def _damage_database(how: str) -> None:
    from captionlab import paths

    path = paths.database_path()
    if how == "foreign":
        path.write_bytes(b"this is not a database, just text on disk\n" * 200)
    else:  # a damaged page in the middle of a real database (its header intact)
        data = bytearray(path.read_bytes())
        data[4096:8192] = b"\xff" * 4096
        path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["foreign", "damaged-page"])
def test_an_unreadable_registry_is_rebuilt_from_the_run_folders(workspace, capsys, how):
    from captionlab import db, paths
    from captionlab.training import runs_db

    done = launch("fake_steps=3", name="done")
    wait_for_state(done.run_id, "finished")
    live = launch("fake_steps=1000", name="live")
    wait_for_step(live, 1)
    for index in range(40):  # enough rows for the table to span several pages
        runs_db.register_run(f"filler-{index:02d}", name="filler " * 20, run_dir=workspace / "nowhere")
    db.rebuild_notes.clear()
    _damage_database(how)

    code, out, err = run_cli(capsys)
    assert code == 0 and "Traceback" not in err
    assert "could not be read" in err and "rebuilt the runs registry from 2 run folders" in err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {done.run_id, live.run_id}
    assert rows[done.run_id][1:5] == ["done", "lora", "tiny", "finished"]
    assert rows[live.run_id][4] == "running"  # its trainer's lock names it: still stoppable
    assert runs_db.get_run(live.run_id)["pid"] == live.pid
    assert launcher.stop_run(live.run_id, grace_s=3)["state"] == "stopped"
    assert launcher.resume_run(live.run_id).pid  # and resumable as launched (launch.json: the fake trainer)
    wait_for_state(live.run_id, "finished")
    assert list(paths.workspace().glob("captionlab.db.unreadable-*"))  # kept for who wants to look


def test_runs_rebuild_by_hand_keeps_what_the_folders_say(workspace, capsys):
    done = launch("fake_steps=3", name="done")
    wait_for_state(done.run_id, "finished")
    code, out, _ = run_cli(capsys, "rebuild")
    assert code == 0 and "from 1 run folder " in out
    code, out, _ = run_cli(capsys)
    assert done.run_id in out and "finished" in out


def test_a_full_disk_at_launch_is_named_and_leaves_no_run_folder(workspace, monkeypatch, capsys):
    import errno

    from captionlab import atomic, paths

    real_write_json = atomic.write_json

    def full_for_launch_json(path, data, *args, **kwargs):
        if path.name == "launch.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_write_json(path, data, *args, **kwargs)

    monkeypatch.setattr(atomic, "write_json", full_for_launch_json)
    with pytest.raises(launcher.LaunchError, match="no space left on device"):
        launch("fake_steps=3")
    assert list(paths.runs_dir().iterdir()) == []


def test_a_full_database_at_launch_is_named_not_an_io_error(workspace, monkeypatch):
    import sqlite3

    from captionlab import paths
    from captionlab.training import runs_db

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(runs_db, "register_run", full)
    with pytest.raises(launcher.LaunchError, match="no space left on device") as raised:
        launch("fake_steps=3")
    assert "disk I/O" not in str(raised.value)
    assert list(paths.runs_dir().iterdir()) == []


def test_the_train_and_energy_tabs_survive_an_unreadable_registry(workspace):
    from captionlab import db
    from captionlab.service import energy, runs

    done = launch("fake_steps=3", name="done")
    wait_for_state(done.run_id, "finished")
    db.rebuild_notes.clear()
    _damage_database("foreign")
    assert [row["run_id"] for row in runs.list_runs()] == [done.run_id]  # the Train tab's list
    assert [row["Run"] for row in energy.run_energy_rows(None)] == [done.run_id]  # the Energy tab's runs
    assert "could not be read" in runs.registry_note()
