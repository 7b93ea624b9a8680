"""Evaluation jobs: `python -m captionlab evaluate ...` started as its own process, without a shell.

Each job is a folder `<workspace>/jobs/<job id>/` with `job.json` (argv, pid, start time) and
`log.txt` (the process's output); its results land in the results store like any evaluation.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from captionlab import atomic, paths
from captionlab.service.settings import AppSettings

EVALUATE_MODULE = "captionlab.cli.evaluate"


def evaluate_available() -> bool:
    return importlib.util.find_spec(EVALUATE_MODULE) is not None


def evaluate_help() -> str:
    if evaluate_available():
        return ("Starts `python -m captionlab evaluate` as its own process (no shell); its scores are added to "
                "the results store, so they appear above after **Reload results**.")
    return ("Not available: the evaluation command (`python -m captionlab evaluate`) is not part of this version of "
            "captionlab yet, so no evaluation job can be started from here.")


def evaluation_argv(settings: AppSettings, strategy: str, dataset: str, checkpoint: str | None,
                    limit: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "captionlab", "evaluate", "--model", settings.model, "--strategy", strategy,
            "--dataset", dataset, "--max-new-tokens", str(settings.max_new_tokens)]
    if checkpoint:
        argv += ["--checkpoint", checkpoint]
    if limit:
        argv += ["--limit", str(limit)]
    if settings.device:
        argv += ["--device", settings.device]
    return argv


def jobs_dir() -> Path:
    path = paths.workspace() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def validate_evaluation(strategy: str, dataset: str, checkpoint: str | None,
                        limit) -> tuple[str, str, str | None, int | None]:
    """The job's inputs checked, paths resolved inside the allowed roots; ValueError names the field."""
    from captionlab.data.readers import FORMATS
    from captionlab.safety.paths import check_checkpoint, check_dataset
    from captionlab.service.catalog import COMPARE_ORDER, DATASETS
    from captionlab.service.runs import dataset_choices

    if strategy not in COMPARE_ORDER:
        raise ValueError(f"strategy: choose one of {', '.join(COMPARE_ORDER)}")
    dataset = check_dataset(dataset, sorted(set(DATASETS) | set(dataset_choices())), FORMATS)
    checkpoint = check_checkpoint(checkpoint) if checkpoint else None
    if limit is not None and not (isinstance(limit, str) and not limit.strip()):
        try:
            number = float(limit)
        except (TypeError, ValueError):
            raise ValueError(f"limit: {limit!r} is not a whole number") from None
        if not math.isfinite(number) or not number.is_integer() or number < 1:
            raise ValueError("limit: must be a whole number, at least 1 (or empty for the whole split)")
        return strategy, dataset, checkpoint, int(number)
    return strategy, dataset, checkpoint, None


def start_evaluation(settings: AppSettings, strategy: str, dataset: str, checkpoint: str | None = None,
                     limit: int | float | str | None = None) -> str:
    """Start the job; returns a message for the user (what started, or why nothing did)."""
    if not evaluate_available():
        return evaluate_help()
    if not strategy or not dataset:
        return "Error: strategy and dataset: both are needed"
    try:
        strategy, dataset, checkpoint, limit = validate_evaluation(strategy, dataset, checkpoint, limit)
    except ValueError as exc:
        return f"Error: {exc}"
    argv = evaluation_argv(settings, strategy, dataset, checkpoint, limit)
    job_id = f"eval-{strategy}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = jobs_dir() / job_id
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "log.txt").open("ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=paths.PROJECT_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                   start_new_session=True)
    _children[process.pid] = process
    atomic.write_json(folder / "job.json", {"job": job_id, "argv": argv, "pid": process.pid, "started": time.time()})
    return f"Started {job_id} (pid {process.pid}); log: {folder / 'log.txt'}"


_children: dict[int, subprocess.Popen] = {}


def list_jobs(limit: int = 20) -> list[dict]:
    """The newest jobs with their state (running / exit code) and the last line of their log."""
    rows = []
    for job_file in sorted(jobs_dir().glob("*/job.json"), reverse=True)[:limit]:
        try:
            job = json.loads(job_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        process = _children.get(job.get("pid"))
        if process is not None:
            code = process.poll()
            state = "running" if code is None else f"exited {code}"
        else:
            state = "running" if _alive(job.get("pid")) else "ended"
        log = job_file.parent / "log.txt"
        last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        rows.append({"job": job["job"], "state": state, "last log line": last[0] if last else ""})
    return rows


def _alive(pid: int | None) -> bool:
    """A live, non-zombie process whose command line is an evaluation (not a reused pid)."""
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and b"evaluate" in argv
