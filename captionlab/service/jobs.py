"""Evaluation jobs: `python -m captionlab evaluate ...` started as its own process, without a shell.

    start_evaluation(settings, "lora", "coco")   # a message; the job starts now, or waits for a free slot
    list_jobs()                                   # newest first: state, progress, ETA, last log line
    stop_job(job_id)                              # SIGTERM its whole process group, SIGKILL after a grace

Each job is a folder `<workspace>/jobs/<job id>/` with `job.json` (argv, state, pid and process group,
times; written before the process starts, so a job never runs unrecorded), `log.txt` (the process's output)
and `progress.json` (images captioned so far, written by the evaluation itself); its results land in the
results store like any evaluation. A job is its own process group (session), so stopping it stops the
world-building and data-loading workers it started. States are the runs' own (run_folder.STATES): queued,
running, finished, failed, stopped, crashed. How many jobs and trainings run at once is capacity.py's cap.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from captionlab import atomic, paths, processes
from captionlab.service import eval_launch
from captionlab.service.settings import AppSettings

EVALUATE_MODULE = "captionlab.cli.evaluate"
PROGRESS_ENV = "CAPTIONLAB_PROGRESS_FILE"  # where the evaluation writes its progress.json (cli/evaluate.py)
FINAL_STATES = ("finished", "failed", "stopped", "crashed")


def evaluate_available() -> bool:
    return importlib.util.find_spec(EVALUATE_MODULE) is not None


def evaluate_help() -> str:
    if evaluate_available():
        return ("Starts `python -m captionlab evaluate` as its own process (no shell); its scores are added to "
                "the results store and appear above as soon as the job finishes.")
    return ("Not available: the evaluation command (`python -m captionlab evaluate`) is not part of this version of "
            "captionlab yet, so no evaluation job can be started from here.")


def evaluation_argv(settings: AppSettings, strategy: str, dataset: str, checkpoint: str | None,
                    limit: int | None = None, gpus: int = 1) -> list[str]:
    """The job's command: `python -m captionlab evaluate ...`, under accelerate launch for several GPUs."""
    from captionlab.evaluation.launch import evaluate_command

    return evaluate_command(evaluation_args(settings, strategy, dataset, checkpoint, limit, gpus), gpus)


def evaluation_args(settings: AppSettings, strategy: str, dataset: str, checkpoint: str | None,
                    limit: int | None = None, gpus: int = 1) -> list[str]:
    """What follows `python -m captionlab`; several GPUs pick their own devices (no --device)."""
    argv = ["evaluate", "--model", settings.model, "--strategy", strategy,
            "--dataset", dataset, "--max-new-tokens", str(settings.max_new_tokens)]
    if checkpoint:
        argv += ["--checkpoint", checkpoint]
    if limit:
        argv += ["--limit", str(limit)]
    if settings.device and gpus == 1:
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
                     limit: int | float | str | None = None, gpus: int | float | str = 1,
                     slurm_partition: str | None = None) -> str:
    """Start the job (on `gpus` GPUs; as a Slurm job when `slurm_partition` is given); returns a message for the
    user (what started, or why nothing did)."""
    if not evaluate_available():
        return evaluate_help()
    if not strategy or not dataset:
        return "Error: strategy and dataset: both are needed"
    try:
        strategy, dataset, checkpoint, limit = validate_evaluation(strategy, dataset, checkpoint, limit)
        gpus = eval_launch.validate_gpus(gpus)
    except ValueError as exc:
        return f"Error: {exc}"
    if slurm_partition is not None:
        folder = jobs_dir() / f"eval-{strategy}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        return eval_launch.submit_to_slurm(evaluation_args(settings, strategy, dataset, checkpoint, limit, gpus),
                                           folder, slurm_partition, gpus)
    return submit_job(evaluation_argv(settings, strategy, dataset, checkpoint, limit, gpus),
                      f"eval-{strategy}-{dataset}")


def submit_job(argv: list[str], prefix: str) -> str:
    """Record a job running `argv`; start it now if a slot is free, else leave it queued. A message for the user."""
    from captionlab.service import capacity

    with capacity.starting:
        try:
            free = capacity.slots().free
            job_id = _new_job(argv, prefix)
        except (OSError, ValueError) as exc:
            return f"Error: could not record the job: {describe_os_error(exc)}"
        if free < 1:
            return f"queued {job_id}: it starts when a slot frees ({capacity.slots().describe()})"
        try:
            job = start_job(job_id)
        except OSError as exc:
            return f"Error: could not start {job_id}: {describe_os_error(exc)}"
    return f"Started {job_id} (pid {job['pid']}); log: {jobs_dir() / job_id / 'log.txt'}"


def describe_os_error(exc: BaseException) -> str:
    """The user's words for a failed write: 'no space left on device' for a full disk, whoever reported it."""
    from captionlab import write_errors

    return write_errors.describe(exc, jobs_dir())


def _new_job(argv: list[str], prefix: str) -> str:
    """A new job folder (an id no other job has, even within one second) with its record, before any process."""
    for _ in range(100):
        job_id = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        folder = jobs_dir() / job_id
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        try:
            _write_job(folder, {"job": job_id, "argv": argv, "state": "queued", "created": time.time(),
                                "message": "waiting for a free slot"})
        except BaseException:
            _remove_folder(folder)  # no orphan folder without a record
            raise
        return job_id
    raise OSError(f"could not create a unique job folder under {jobs_dir()}")


def start_job(job_id: str) -> dict:
    """Start a queued job in its own session (process group), output to log.txt; returns its record."""
    folder = jobs_dir() / job_id
    job = _read_job(folder)
    if job is None or job.get("state") != "queued":
        raise OSError(f"job {job_id} is not waiting to start")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PROGRESS_ENV: str(folder / "progress.json")}
    with (folder / "log.txt").open("ab") as log:
        process = subprocess.Popen(job["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=paths.PROJECT_ROOT, env=env, start_new_session=True)
    _children[process.pid] = process
    job.update(state="running", pid=process.pid, pgid=process.pid, started=time.time(), message="")
    _write_job(folder, job)
    return job


def stop_job(job_id: str, grace_s: float = 10.0) -> str:
    """Stop a job: a queued one never starts; a running one's whole process group gets SIGTERM, then SIGKILL."""
    folder = jobs_dir() / _safe_id(job_id)
    job = _refreshed(folder)
    if job is None:
        return f"Error: no job {job_id!r}"
    if job.get("slurm_job_id"):  # Slurm owns it: its scheduler cancels it, not a signal from here
        return f"{job_id} runs on Slurm: cancel it there with `scancel {job['slurm_job_id']}`"
    if job["state"] in FINAL_STATES:
        return f"{job_id} is already {job['state']}"
    if job["state"] == "running":
        _kill_group(job, grace_s)
    job.update(state="stopped", ended=time.time(), message="stopped by the user")
    _write_job(folder, job)
    return f"{job_id}: stopped"


_children: dict[int, subprocess.Popen] = {}


def job_records(limit: int | None = None) -> list[dict]:
    """The newest jobs' records (job.json), each with its state brought up to date."""
    records = []
    for job_file in sorted(jobs_dir().glob("*/job.json"), key=lambda f: f.stat().st_mtime if f.exists() else 0,
                           reverse=True):
        job = _refreshed(job_file.parent)
        if job is not None:
            records.append(job)
    records.sort(key=lambda job: job.get("created") or 0, reverse=True)
    return records[:limit] if limit else records


def list_jobs(limit: int = 20) -> list[dict]:
    """The newest jobs, each with its state, progress, ETA and the last line of its log (starting waiting jobs
    first when a slot is free)."""
    from captionlab.service import capacity

    try:
        capacity.start_waiting()
    except ValueError:
        pass  # a bad cap setting: the jobs still list (start_evaluation says what is wrong)
    rows = []
    for job in job_records(limit):
        folder = jobs_dir() / job["job"]
        log = folder / "log.txt"
        last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
        done, total, eta_s = progress_of(job, _read_progress(folder))
        state = eval_launch.slurm_job_state(folder) if job.get("slurm_job_id") else job["state"]
        rows.append({"job": job["job"], "state": state,
                     "progress": f"{done}/{total} images" if total else "",
                     "ETA": format_eta(eta_s) if job["state"] == "running" else "—",
                     "last log line": last[0] if last else job.get("message", "")})
    return rows


def progress_of(job: dict, progress: dict, now: float | None = None) -> tuple[int, int | None, float | None]:
    """(images done, total, seconds left) where seconds left come from the measured rate: the images captioned
    since the first report (after the model loaded and earlier predictions were read back) over the time they
    took. None until two reports are apart."""
    done, total = int(progress.get("done") or 0), progress.get("total")
    first_done, first_at, at = progress.get("first_done"), progress.get("first_at"), progress.get("at")
    if not total or first_at is None or at is None or at <= first_at or done <= (first_done or 0):
        return done, total, None
    rate = (done - first_done) / (at - first_at)
    since_report = (now if now is not None else time.time()) - at
    return done, total, max(0.0, (total - done) / rate - since_report)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "measuring..."
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _refreshed(folder: Path) -> dict | None:
    """The job's record, a running job whose process ended moved to finished / failed / crashed (and saved)."""
    job = _read_job(folder)
    if job is None or job.get("state") != "running":
        return job
    pid = job.get("pid")
    process = _children.get(pid)
    if process is not None:
        code = process.poll()
        if code is None:
            return job
        _children.pop(pid, None)
        state, message = ("finished", "") if code == 0 else ("failed", f"exit code {code}; see log.txt")
    elif _alive(pid):
        return job
    else:  # started by another app process: the evaluation's own last word says how it ended
        ended = _read_progress(folder).get("state")
        state, message = (ended, "") if ended in ("finished", "failed") else (
            "crashed", "the process ended without finishing; see log.txt")
    job.update(state=state, ended=time.time(), message=message)
    _write_job(folder, job)
    return job


def _kill_group(job: dict, grace_s: float) -> None:
    pgid = job.get("pgid") or job.get("pid")
    if not pgid or not (_alive(job.get("pid")) or _group_alive(pgid)):
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            process = _children.get(job.get("pid"))
            if process is not None:
                process.poll()
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in the group."""
    return bool(processes.group_members(pgid))


def _safe_id(job_id: str) -> str:
    name = Path(str(job_id)).name
    if not name or name != str(job_id) or name.startswith("."):
        raise ValueError(f"not a job id: {job_id!r}")
    return name


def _read_job(folder: Path) -> dict | None:
    try:
        job = json.loads((folder / "job.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if "state" not in job:  # a job recorded before job states existed: running or ended
        job["state"] = "running" if _alive(job.get("pid")) else "finished"
    job.setdefault("created", job.get("started") or 0)
    return job


def _write_job(folder: Path, job: dict) -> None:
    atomic.write_json(folder / "job.json", job)


def _read_progress(folder: Path) -> dict:
    try:
        return json.loads((folder / "progress.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _remove_folder(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int | None) -> bool:
    """A live, non-zombie process whose command line is an evaluation (not a reused pid)."""
    if not pid:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return processes.is_live(pid) and b"evaluate" in argv
