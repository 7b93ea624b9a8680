"""Evaluation jobs (issues 17.5, 17.6, 26.7): unique ids, a record before the process, Stop reaching the whole
process group, one cap for evaluations and trainings with a queue, the runs' state words, an ETA from the rate.

Jobs here run small stand-in commands (`python -c ...`), not the evaluation: what is tested is the job's life.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from captionlab.service import capacity, jobs


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path))
    monkeypatch.setenv(capacity.MAX_ACTIVE_ENV, "10")
    yield tmp_path
    for job in jobs.job_records():
        if job["state"] in ("running", "queued"):
            jobs.stop_job(job["job"], grace_s=1)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_until(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")


def state_of(job_id: str) -> str:
    return next(row["state"] for row in jobs.list_jobs() if row["job"] == job_id)


def job_id_in(message: str) -> str:
    return re.search(r"(?:started|queued) ([\w-]+)", message, re.IGNORECASE).group(1)


def test_jobs_started_in_the_same_second_get_their_own_folder_and_log(workspace):
    messages = [jobs.submit_job(python("print('hello')"), "eval-lora-coco") for _ in range(6)]
    ids = [job_id_in(m) for m in messages]
    assert len(set(ids)) == 6
    assert len({(jobs.jobs_dir() / i / "log.txt") for i in ids}) == 6
    for job_id in ids:
        wait_until(lambda: state_of(job_id) == "finished")
        assert (jobs.jobs_dir() / job_id / "log.txt").read_text().strip() == "hello"


def test_job_states_are_the_runs_words(workspace):
    ok = job_id_in(jobs.submit_job(python("pass"), "ok"))
    bad = job_id_in(jobs.submit_job(python("raise SystemExit(3)"), "bad"))
    wait_until(lambda: state_of(ok) == "finished")
    wait_until(lambda: state_of(bad) == "failed")
    assert not any("exited" in row["state"] for row in jobs.list_jobs())
    assert "exit code 3" in jobs.job_records()[0]["message"] + jobs.job_records()[1]["message"]


def test_the_record_is_written_before_the_process_starts(workspace, monkeypatch):
    seen = {}
    real_popen = jobs.subprocess.Popen

    def popen(argv, **kwargs):
        folder = Path(kwargs["env"][jobs.PROGRESS_ENV]).parent
        seen.update(json.loads((folder / "job.json").read_text()))
        return real_popen(argv, **kwargs)

    monkeypatch.setattr(jobs.subprocess, "Popen", popen)
    job_id = job_id_in(jobs.submit_job(python("pass"), "eval"))
    assert seen["job"] == job_id and seen["state"] == "queued" and seen["argv"][-1] == "pass"


def test_a_full_disk_is_named_and_leaves_no_job_folder(workspace, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jobs.atomic, "write_json", full)
    message = jobs.submit_job(python("pass"), "eval")
    assert "no space left on device" in message.lower()
    assert list(jobs.jobs_dir().iterdir()) == []


def test_stop_ends_the_job_and_the_workers_it_started(workspace):
    worker_file = workspace / "worker.pid"
    code = ("import subprocess, sys, time; "
            "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(worker_file)!r}, 'w').write(str(w.pid)); time.sleep(120)")
    job_id = job_id_in(jobs.submit_job(python(code), "eval"))
    worker = int(wait_until(lambda: worker_file.exists() and worker_file.read_text()))
    assert jobs.stop_job(job_id, grace_s=2) == f"{job_id}: stopped"
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split(")")[1][:3]
    assert state_of(job_id) == "stopped"
    assert jobs.stop_job(job_id) == f"{job_id} is already stopped"


def test_jobs_beyond_the_cap_wait_their_turn(workspace, monkeypatch):
    monkeypatch.setenv(capacity.MAX_ACTIVE_ENV, "1")
    first = job_id_in(jobs.submit_job(python("import time; time.sleep(120)"), "first"))
    message = jobs.submit_job(python("pass"), "second")
    assert message.startswith("queued ") and "1 of 1 slots busy" in message
    second = job_id_in(message)
    assert state_of(second) == "queued" and capacity.slots().waiting == 1
    jobs.stop_job(first, grace_s=1)
    wait_until(lambda: state_of(second) == "finished")  # listing started it once the slot freed


def test_a_queued_job_can_be_stopped_before_it_starts(workspace, monkeypatch):
    monkeypatch.setenv(capacity.MAX_ACTIVE_ENV, "1")
    jobs.submit_job(python("import time; time.sleep(120)"), "first")
    waiting = job_id_in(jobs.submit_job(python("pass"), "second"))
    assert jobs.stop_job(waiting) == f"{waiting}: stopped"
    assert "pid" not in jobs.job_records()[0]


def test_a_bad_cap_is_refused_with_its_name(workspace, monkeypatch):
    monkeypatch.setenv(capacity.MAX_ACTIVE_ENV, "0")
    assert capacity.MAX_ACTIVE_ENV in jobs.submit_job(python("pass"), "eval")


def test_the_eta_comes_from_the_measured_rate():
    # 10 images in the first 20 s after loading, 30 left: 60 s, less the 5 s since the last report
    progress = {"done": 20, "total": 50, "first_done": 10, "first_at": 100.0, "at": 120.0}
    assert jobs.progress_of({}, progress, now=125.0) == (20, 50, 55.0)
    assert jobs.progress_of({}, {"done": 10, "total": 50, "first_done": 10, "first_at": 100.0, "at": 100.0},
                            now=130.0)[2] is None  # one report: no rate yet
    assert jobs.format_eta(55.0) == "55s" and jobs.format_eta(125) == "2m 05s"
    assert jobs.format_eta(None) == "measuring..."
