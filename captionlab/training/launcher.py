"""Start, stop, resume and watch training runs: each one the trainer CLI in its own process (or Slurm job).

    info = launch_run("train/recipes/lora.yaml", ["epochs=1"], name="my run")
    list_runs_with_status()          # DB rows joined with each run's live status.json
    stop_run(info.run_id)            # SIGTERM the process group, SIGKILL after a grace period
    resume_run(info.run_id)          # python -m train run --run-dir DIR --resume

The config is validated before anything starts. The trainer is started without a shell, in a new
session (so stopping it stops everything it spawned), with stdout/stderr going to the run's log.txt,
so it outlives the app or CLI that launched it. `refresh_runs` notices runs whose process died
without saying so and marks them crashed; the app calls it at start-up and when listing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from captionlab import atomic, paths, processes
from captionlab.training import run_lock, runs_db
from captionlab.training.energy import energy_so_far_kwh
from captionlab.training.run_folder import RunFolder, is_complete_checkpoint

ACTIVE_STATES = ("queued", "running")
RESUMABLE_STATES = ("stopped", "crashed", "failed")
WAITING_MESSAGE = "waiting for a free slot (see the cap on concurrent jobs)"  # launched with start=False
RESUME_CHECKPOINTS = ("last", "previous")  # the trainer resumes from the newest of these that verifies
LAUNCH_SPEC_NAME = "launch.json"  # in the run folder: name, recipe, backend and launch_spec, for a rebuilt registry
SLURM_ALIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")
_children: dict[int, subprocess.Popen] = {}  # processes this interpreter started, so they can be reaped


class LaunchError(RuntimeError):
    """A run could not be launched, stopped or resumed; the message says why, for the user."""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    name: str
    run_dir: Path
    backend: str
    command: list[str]
    pid: int | None = None
    pgid: int | None = None
    slurm_job_id: str | None = None


# --- launching -----------------------------------------------------------------------------------


def launch_run(recipe: str | Path, overrides: list[str] = (), name: str | None = None, gpus: int = 1,
               runs_root: Path | None = None, trainer_cmd: list[str] | None = None, start: bool = True) -> RunInfo:
    """Validate, create the run folder and start the trainer locally. `trainer_cmd` replaces the
    `python -m train run` prefix (tests use a fake trainer); `--run-dir DIR [--resume]` is appended.
    With start=False the run waits, queued, until `start_waiting_run` (the app's cap on concurrent jobs)."""
    if gpus < 1:
        raise LaunchError(f"gpus must be at least 1 (got {gpus})")
    config, default_name = resolve_recipe(recipe, list(overrides))
    run_name = sanitize_run_name(name or default_name)
    spec = {"gpus": gpus, "trainer_cmd": list(trainer_cmd) if trainer_cmd else None}
    folder = _create_registered_run(config, run_name, runs_root, recipe, spec)
    if not start:
        folder.write_status(state="queued", message=WAITING_MESSAGE)
        runs_db.update_run(folder.run_id, message=WAITING_MESSAGE)
        return RunInfo(folder.run_id, run_name, folder.path, "local", [])
    return _start_local(folder.run_id, resume=False)


def _create_registered_run(config: dict, run_name: str, runs_root: Path | None, recipe, spec: dict,
                           backend: str = "local") -> RunFolder:
    """The run folder (with launch.json: how to start it again, for a registry rebuilt from the folders) and its
    registry row; a failed write (a full disk) leaves neither behind and says what happened."""
    import sqlite3

    from captionlab import write_errors

    folder = None
    try:
        folder = create_run_folder(config, run_name, runs_root)
        atomic.write_json(folder.path / LAUNCH_SPEC_NAME, {"name": run_name, "recipe": str(recipe),
                                                           "backend": backend, **spec})
        runs_db.register_run(folder.run_id, name=run_name, run_dir=folder.path, recipe=str(recipe),
                             backend=backend, launch_spec=spec, **_describe(config))
    except (OSError, sqlite3.Error) as exc:
        if folder is not None:
            shutil.rmtree(folder.path, ignore_errors=True)  # no orphan folder the registry does not know
        raise LaunchError(f"could not create the run: {write_errors.describe(exc, paths.runs_dir())}") from None
    return folder


def is_waiting(row: dict) -> bool:
    """A local run launched with start=False that no trainer has picked up yet."""
    return (row["backend"] == "local" and row["state"] == "queued" and row["pid"] is None
            and row["message"] == WAITING_MESSAGE)


def start_waiting_run(run_id: str) -> RunInfo:
    """Start a run that waited for a free slot."""
    row = _require_run(run_id)
    if not is_waiting(row):
        raise LaunchError(f"run {run_id} is not waiting to start (state: {row['state']})")
    return _start_local(run_id, resume=False)


def submit_slurm(recipe: str | Path, overrides: list[str] = (), name: str | None = None, *, partition: str,
                 gpus: int = 1, time_min: int = 24 * 60, runs_root: Path | None = None,
                 cpus_per_task: int | None = None, mem_gb: int | None = None) -> RunInfo:
    """Like launch_run, but as a Slurm job through submitit (its files in DIR/slurm/)."""
    _require_slurm()
    config, default_name = resolve_recipe(recipe, list(overrides))
    run_name = sanitize_run_name(name or default_name)
    spec = {"gpus": gpus, "trainer_cmd": None,
            "slurm": {"partition": partition, "time_min": time_min, "cpus_per_task": cpus_per_task, "mem_gb": mem_gb}}
    folder = _create_registered_run(config, run_name, runs_root, recipe, spec, backend="slurm")
    return _submit_slurm_job(folder.run_id, resume=False)


def resolve_recipe(recipe: str | Path, overrides: list[str]) -> tuple[dict, str]:
    """The resolved config (as a dict) and its run name; bad input raises LaunchError with the validator's message."""
    from captionlab.training.config import resolve_config

    try:
        config = resolve_config(recipe, overrides)
    except Exception as exc:  # the validator's message is the user's answer, whatever its type
        raise LaunchError(str(exc) or type(exc).__name__) from None
    return config.to_dict(), config.run_name


def preview_command(recipe: str | Path, overrides: list[str] = (), gpus: int = 1, name: str | None = None) -> str:
    """The shell line that launches the same run from a terminal (shown by the app)."""
    argv = ["python", "-m", "captionlab", "runs", "launch", str(recipe), *overrides]
    if gpus > 1:
        argv += ["--gpus", str(gpus)]
    if name:
        argv += ["--name", name]
    return shlex.join(argv)


def trainer_command(run_dir: Path, gpus: int = 1, resume: bool = False,
                    trainer_cmd: list[str] | None = None, fsdp: bool = False) -> list[str]:
    """The argv that trains `run_dir`: python -m train run (under accelerate for several GPUs, or for FSDP)."""
    if trainer_cmd:
        prefix = list(trainer_cmd)
    elif gpus > 1:
        # --multi_gpu selects accelerate's torchrun launcher (without it, accelerate runs one process);
        # FSDP or DDP is the run's `distributed` setting, read by the trainer
        prefix = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
                  "-m", "train", "run"]
    elif fsdp:
        # FSDP needs a process group even for one GPU: --use_fsdp is the torchrun launcher for one process
        prefix = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
                  "--num_processes", "1", "-m", "train", "run"]
    else:
        prefix = [sys.executable, "-m", "train", "run"]
    return [*prefix, "--run-dir", str(run_dir), *(["--resume"] if resume else [])]


def sanitize_run_name(name: str) -> str:
    """Letters, digits, '-' and '_' only: safe as a folder name and inside any shell line."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", str(name)).strip("-_")
    return re.sub(r"-{2,}", "-", cleaned)[:64].strip("-_") or "run"


def create_run_folder(config: dict, run_name: str, runs_root: Path | None) -> RunFolder:
    """<runs>/<run_name>-<YYYYmmdd-HHMMSS>[-N]/ with config.yaml and a queued status.json."""
    root = Path(runs_root).resolve() if runs_root is not None else paths.runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    base = f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1, 1000):
        path = root / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise LaunchError(f"could not create a unique run folder for {base!r} in {root}")
    folder = RunFolder(path)
    try:
        atomic.write_text(folder.config_path, yaml.safe_dump(config, sort_keys=False))
        folder.write_status(state="queued", message="launching")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # a half-written folder (a full disk) is no run
        raise
    return folder


def _describe(config: dict) -> dict:
    return {key: str(config.get(key) or "") for key in ("model", "strategy", "dataset")}


def _start_local(run_id: str, resume: bool, lock: run_lock.RunLock | None = None) -> RunInfo:
    """Start the trainer holding the run's lock (taken here unless the caller holds it already): the child
    inherits the lock's descriptor, so the run stays owned from this check to the trainer's last breath."""
    row = runs_db.get_run(run_id)
    folder = RunFolder(Path(row["run_dir"]))
    own_lock = lock is None
    lock = lock or _lock_run(row)
    try:
        spec = row["launch_spec"]
        command = trainer_command(folder.path, spec.get("gpus", 1), resume, spec.get("trainer_cmd"),
                                  _uses_fsdp(folder))
        try:
            process = _spawn(command, folder, lock)
        except OSError as exc:
            from captionlab import write_errors

            message = f"could not start the trainer: {write_errors.describe(exc, folder.path)}"
            folder.write_status(state="failed", message=message)
            runs_db.update_run(run_id, state="failed", message=message)
            raise LaunchError(message) from None
    finally:
        if own_lock:
            lock.release()
    pgid = _pgid_of(process.pid)
    runs_db.update_run(run_id, state="running", pid=process.pid, pgid=pgid,
                       message="resumed" if resume else "started")
    return RunInfo(run_id, row["name"], folder.path, "local", command, process.pid, pgid)


def _lock_run(row: dict) -> run_lock.RunLock:
    """The run's trainer lock, or LaunchError naming the live pid that trains it."""
    try:
        return run_lock.acquire(Path(row["run_dir"]))
    except run_lock.RunBusyError as busy:
        raise LaunchError(str(busy)) from None


def _spawn(command: list[str], folder: RunFolder, lock: run_lock.RunLock) -> subprocess.Popen:
    """Start `command` without a shell, in its own session, output appended to log.txt, holding the run's lock."""
    with folder.log_path.open("ab") as log:
        log.write(f"[launcher {time.strftime('%Y-%m-%d %H:%M:%S')}] {shlex.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   cwd=paths.PROJECT_ROOT, pass_fds=lock.pass_fds,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **lock.child_env()},
                                   start_new_session=True)
    lock.record_holder(process.pid)
    _children[process.pid] = process
    return process


def _uses_fsdp(folder: RunFolder) -> bool:
    try:
        return (yaml.safe_load(folder.config_path.read_text()) or {}).get("distributed") == "fsdp"
    except (OSError, yaml.YAMLError):
        return False


def _pgid_of(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return pid  # start_new_session makes it a group leader: pgid == pid


# --- stop, resume ------------------------------------------------------------------------------


def stop_run(run_id: str, grace_s: float = 30.0) -> dict:
    """Stop a run: SIGTERM its whole process group, SIGKILL whatever is left after `grace_s`.

    The trainer answers SIGTERM by finishing its step and checkpointing, hence the grace period."""
    row = _require_run(run_id)
    if row["state"] not in ACTIVE_STATES:
        raise LaunchError(f"run {run_id} is not running (state: {row['state']})")
    if row["backend"] == "slurm":
        _cancel_slurm_job(row)
    else:
        _terminate_group(row["pid"], row["pgid"], row["run_dir"], grace_s)
    folder = RunFolder(Path(row["run_dir"]))
    if folder.read_status().get("state") == "finished":  # it finished before the signal landed
        return runs_db.update_run(run_id, state="finished", message=folder.read_status().get("message") or "")
    folder.write_status(state="stopped", message="stopped by the user")
    return runs_db.update_run(run_id, state="stopped", message="stopped by the user")


def resume_run(run_id: str) -> RunInfo:
    """Continue a stopped, crashed or failed run from its last/ checkpoint (or previous/, the one before).

    Refused (naming the pid) while a live trainer holds the run: two resumes at once start one trainer."""
    refresh_runs()
    row = _require_run(run_id)
    lock = _lock_run(row) if row["backend"] == "local" else None
    try:
        row = _require_run(run_id)  # re-read under the lock: a resume that just finished changed it
        if row["state"] not in RESUMABLE_STATES:
            raise LaunchError(f"run {run_id} is {row['state']}; only a stopped, crashed or failed run can be "
                              "resumed")
        folder = RunFolder(Path(row["run_dir"]))
        if not any(is_complete_checkpoint(folder.path / name) for name in RESUME_CHECKPOINTS):
            raise LaunchError(f"run {run_id} has no complete checkpoint ({' or '.join(RESUME_CHECKPOINTS)} in "
                              f"{folder.path}) to resume from; launch it again instead")
        folder.write_status(state="queued", message="resuming")
        if row["backend"] == "slurm":
            return _submit_slurm_job(run_id, resume=True)
        return _start_local(run_id, resume=True, lock=lock)
    finally:
        if lock is not None:
            lock.release()


def _require_run(run_id: str) -> dict:
    row = runs_db.get_run(run_id)
    if row is None:
        raise LaunchError(f"no run with id {run_id!r}")
    return row


def _terminate_group(pid: int | None, pgid: int | None, run_dir: str, grace_s: float) -> None:
    if pgid is None:  # started from a terminal (`train run --recipe`): its group is not ours to signal
        _terminate_process(pid, run_dir, grace_s)
        return
    if not _group_is_ours(pid, pgid, run_dir):
        return

    def gone() -> bool:
        _reap(pid)
        return not processes.group_members(pgid)

    _signal_until_gone(lambda sig: os.killpg(pgid, sig), gone, grace_s)


def _terminate_process(pid: int | None, run_dir: str, grace_s: float) -> None:
    """SIGTERM one trainer process (if it is still ours), SIGKILL it if it outlives `grace_s`. Under a distributed
    launch this is rank 0, which stops the other ranks with it (the trainer agrees on stopping across ranks)."""
    if pid is None or not _is_our_process(pid, run_dir):
        return
    _signal_until_gone(lambda sig: os.kill(pid, sig), lambda: not _is_our_process(pid, run_dir), grace_s)


def _signal_until_gone(send, gone, grace_s: float) -> None:
    """SIGTERM, wait up to `grace_s` for `gone()`, then SIGKILL and wait 5 s more."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            send(sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if gone():
                return
            time.sleep(0.05)


def _group_is_ours(pid: int | None, pgid: int, run_dir: str) -> bool:
    """True unless the group's id now belongs to an unrelated process (the run's leader died, its pid reused)."""
    if pid is not None and _is_our_process(pid, run_dir):
        return True
    leader = processes.proc_stat(pgid)
    if leader is not None and leader[0] != "Z":
        return False  # a live leader that is not our trainer: someone else's group
    return bool(processes.group_members(pgid))  # leaderless members left behind by our trainer


# --- liveness --------------------------------------------------------------------------------------


def refresh_runs() -> list[dict]:
    """Mark runs whose process is gone as crashed (or as finished/failed when status.json says so).

    Returns the rows that changed."""
    changed = []
    for row in runs_db.list_runs():
        if row["state"] not in ACTIVE_STATES or is_waiting(row):
            continue
        folder = RunFolder(Path(row["run_dir"]))
        alive = _slurm_job_alive(row) if row["backend"] == "slurm" else (
            row["pid"] is not None and _is_our_process(row["pid"], row["run_dir"]))
        status = folder.read_status()
        live_state = status.get("state")
        if alive is not False:  # running, or (Slurm) unknown: trust what the trainer wrote
            if live_state == "running" and row["state"] != "running":
                changed.append(runs_db.update_run(row["run_id"], state="running", message=""))
            elif alive is None and live_state in ("finished", "failed"):
                changed.append(runs_db.update_run(row["run_id"], state=live_state,
                                                  message=status.get("message") or ""))
            continue
        if live_state in ("finished", "failed", "stopped"):
            changed.append(runs_db.update_run(row["run_id"], state=live_state, message=status.get("message") or ""))
            continue
        message = (f"the trainer (pid {row['pid'] or row['slurm_job_id']}) ended without finishing "
                   f"(last state {live_state}, step {status.get('step', '?')}/{status.get('total_steps', '?')}); "
                   "see log.txt")
        folder.write_status(state="crashed", message=message)
        changed.append(runs_db.update_run(row["run_id"], state="crashed", message=message))
    return changed


def _is_our_process(pid: int, run_dir: str) -> bool:
    """Alive, not a zombie, and (where /proc exists) its command line names the run folder."""
    _reap(pid)
    if not Path("/proc/self").exists():
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
    stat = processes.proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return str(run_dir) in argv


def _reap(pid: int | None) -> None:
    """Collect an exited child of ours, so it is not seen as alive (a zombie)."""
    if pid is None:
        return
    process = _children.get(pid)
    if process is not None:
        if process.poll() is not None:
            _children.pop(pid, None)
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: whoever its parent is reaps it
        pass


# --- listing -----------------------------------------------------------------------------------


def list_runs_with_status() -> list[dict]:
    """Every run (newest first): its registry row plus live progress from the run folder."""
    refresh_runs()
    return [run_with_status(row) for row in runs_db.list_runs()]


def run_with_status(row: dict) -> dict:
    folder = RunFolder(Path(row["run_dir"]))
    status, energy = folder.read_status(), folder.read_energy()
    rows = tail_metrics(folder)
    logged = next((m for m in reversed(rows) if m.get("energy_j") is not None), {})
    energy_kwh = energy_so_far_kwh(energy.get("kwh_all_epochs"), logged.get("energy_j"),
                                   energy.get("initial_validation_kwh"))
    return {**row, "live_state": status.get("state"), "step": status.get("step"),
            "total_steps": status.get("total_steps"), "epoch": status.get("epoch"),
            "best_epoch": status.get("best_epoch"), "best_val_loss": status.get("best_val_loss"),
            "energy_kwh": energy_kwh, "energy_kwh_best": energy.get("kwh_best"),
            "energy_method": energy.get("method") or status.get("energy_method"),
            "energy_label": energy.get("label") or status.get("energy_label"),
            # the two figures energy_kwh is picked from, for who shows both: completed epochs (energy.json, every
            # process) and the newest metrics row (the main process's meter, up to its step)
            "energy_kwh_completed": energy.get("kwh_all_epochs"), "energy_epochs_completed": energy.get("epochs"),
            "energy_kwh_initial_validation": energy.get("initial_validation_kwh"),
            "energy_j_logged": logged.get("energy_j"), "energy_step_logged": logged.get("step")}


def tail_metrics(folder: RunFolder, rows: int = 20) -> list[dict]:
    """The last complete rows of metrics.jsonl, read from the file's end (it can be long)."""
    if not folder.metrics_path.exists():
        return []
    with folder.metrics_path.open("rb") as handle:
        handle.seek(0, 2)
        handle.seek(max(0, handle.tell() - 64 * 1024))
        lines = handle.read().decode("utf-8", errors="replace").splitlines()
    parsed = []
    for line in lines[-rows - 1:]:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue  # the first line may be cut by the seek, the last by a crash
        if isinstance(value, dict):
            parsed.append(value)
    return parsed[-rows:]


# --- Slurm ---------------------------------------------------------------------------------------


def _require_slurm() -> None:
    if shutil.which("sbatch") is None:
        raise LaunchError("Slurm is not available here: `sbatch` is not on PATH. "
                          "Submit from a Slurm login node, or launch the run locally.")


def _submit_slurm_job(run_id: str, resume: bool) -> RunInfo:
    import submitit

    row = runs_db.get_run(run_id)
    folder = RunFolder(Path(row["run_dir"]))
    spec = row["launch_spec"]
    slurm = spec["slurm"]
    command = trainer_command(folder.path, spec.get("gpus", 1), resume, fsdp=_uses_fsdp(folder))
    parameters = {"slurm_partition": slurm["partition"], "timeout_min": slurm["time_min"], "nodes": 1,
                  "tasks_per_node": 1, "gpus_per_node": spec.get("gpus", 1), "name": run_id}
    parameters.update({k: slurm[k] for k in ("cpus_per_task", "mem_gb") if slurm.get(k)})
    try:
        executor = submitit.AutoExecutor(folder=folder.path / "slurm", cluster="slurm")
        executor.update_parameters(**parameters)
        job = executor.submit(submitit.helpers.CommandFunction(command, cwd=str(paths.PROJECT_ROOT)))
    except Exception as exc:
        message = f"Slurm submission failed: {exc}"
        folder.write_status(state="failed", message=message)
        runs_db.update_run(run_id, state="failed", message=message)
        raise LaunchError(message) from None
    runs_db.update_run(run_id, state="queued", slurm_job_id=str(job.job_id),
                       message=f"submitted as Slurm job {job.job_id}")
    return RunInfo(run_id, row["name"], folder.path, "slurm", command, slurm_job_id=str(job.job_id))


def _slurm_job(row: dict):
    import submitit

    return submitit.SlurmJob(folder=Path(row["run_dir"]) / "slurm", job_id=str(row["slurm_job_id"]))


def _slurm_job_alive(row: dict) -> bool | None:
    """True/False from Slurm's accounting; None when it cannot be asked (not on the cluster)."""
    if not row["slurm_job_id"] or shutil.which("sacct") is None:
        return None
    try:
        state = _slurm_job(row).state
    except Exception:
        return None
    if state.startswith("UNKNOWN"):
        return None
    return state.split()[0] in SLURM_ALIVE_STATES


def _cancel_slurm_job(row: dict) -> None:
    if shutil.which("scancel") is None:
        raise LaunchError("cannot stop a Slurm run here: `scancel` is not on PATH")
    try:
        _slurm_job(row).cancel(check=True)
    except Exception as exc:
        raise LaunchError(f"scancel failed for job {row['slurm_job_id']}: {exc}") from None
