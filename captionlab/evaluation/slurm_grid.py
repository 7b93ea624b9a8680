"""The benchmark grid as a Slurm job array (through submitit): one array task per cell, captioner x benchmark.

    python -m captionlab evaluate --grid --slurm --partition gpu [--strategies ...] [--datasets ...]
    python -m captionlab evaluate --grid --status [the same selection]    # done, running, failed (+ log tail)

A cell is `python -m captionlab evaluate --strategy S --dataset D [--checkpoint A] --json ...` (under
`accelerate launch` for --gpus-per-cell above 1), so it writes the same evaluation folder, results.json and results
row as any evaluation, and resumes from its own predictions.jsonl when it runs again. Each grid has a folder,
`<workspace>/evaluations/grids/<model>-<hash of the selection>/`: grid.json (the selection and its cells), submitit's
files in slurm/, and per cell `cells/<strategy>--<dataset>/` with job.json (the job that runs it) and done.json or
failed.json (written by the cell as it ends). Submitting the same selection again submits only the cells that are
neither done nor running; `grid_status` says which is which, with the end of a failed cell's log.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from captionlab import atomic, paths, processes
from captionlab.evaluation.targets import EvaluationError, discover_checkpoint, resolve_model
from captionlab.names import strategy_traits

CLUSTERS = ("slurm", "local")  # local: submitit's local executor, the same array as processes on this machine
SLURM_ALIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")
LOG_TAIL_LINES = 15


def slurm_available() -> bool:
    """Whether jobs can be submitted to Slurm from here (`sbatch` on PATH)."""
    return shutil.which("sbatch") is not None


@dataclass(frozen=True)
class GridSelection:
    """What a grid evaluates; the same selection always names the same grid folder."""

    model: str
    strategies: tuple[str, ...]
    datasets: tuple[str, ...]
    config: str | None = None
    checkpoints: str | None = None
    limit: int | None = None
    max_new_tokens: int = 40
    skip_broken: bool = False

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class SlurmSettings:
    """Where and how each cell runs."""

    partition: str | None = None
    time_min: int = 240
    gpus_per_cell: int = 1
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    batch_size: int | None = None  # images per batch; not part of the selection (the captions do not depend on it)


@dataclass
class CellState:
    strategy: str
    dataset: str
    state: str  # done, running, pending, failed, not submitted, unknown
    job_id: str | None = None
    detail: str = ""
    log_tail: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return cell_name(self.strategy, self.dataset)


@dataclass
class SubmitReport:
    folder: Path
    submitted: list[str] = field(default_factory=list)  # cell names
    kept: dict[str, str] = field(default_factory=dict)  # cell name -> done / running / pending
    skipped: dict[str, str] = field(default_factory=dict)  # strategy -> why it has no cell


def cell_name(strategy: str, dataset: str) -> str:
    return f"{strategy}--{dataset.replace('/', '_').replace(':', '_')}"


def grid_folder(selection: GridSelection) -> Path:
    model = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(selection.model).name)[:40] or "model"
    return paths.workspace() / "evaluations" / "grids" / f"{model}-{selection.key()}"


def plan_cells(selection: GridSelection) -> tuple[list[dict], dict[str, str]]:
    """(cells, strategy -> why it has none): each strategy with a checkpoint (zero-shot needs none) x each dataset."""
    target = resolve_model(selection.model)
    cells, skipped = [], {}
    for strategy in selection.strategies:
        found, reason = discover_checkpoint(target, strategy, selection.checkpoints, model_arg=selection.model)
        if found is None and strategy_traits(strategy).trains:  # zero-shot needs no checkpoint
            skipped[strategy] = reason or "no checkpoint"
            continue
        for dataset in selection.datasets:
            checkpoint = None if found is None else str(found)
            cells.append({"strategy": strategy, "dataset": dataset, "checkpoint": checkpoint})
    return cells, skipped


def cell_argv(selection: GridSelection, cell: dict, batch_size: int | None) -> list[str]:
    """The evaluate command line of one cell (what follows `python -m captionlab`)."""
    argv = ["evaluate", "--model", selection.model, "--strategy", cell["strategy"],
            "--dataset", cell["dataset"], "--max-new-tokens", str(selection.max_new_tokens), "--json"]
    for flag, value in (("--checkpoint", cell["checkpoint"]), ("--config", selection.config),
                        ("--limit", selection.limit), ("--batch-size", batch_size)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--skip-broken"] if selection.skip_broken else [])


def submit_grid(selection: GridSelection, settings: SlurmSettings, cluster: str = "slurm") -> SubmitReport:
    """Submit, as one job array, every cell of `selection` that is neither done nor running (see the module)."""
    import submitit

    _check_submission(settings, cluster)
    folder = grid_folder(selection)
    cells, skipped = plan_cells(selection)
    atomic.write_json(folder / "grid.json", {"selection": asdict(selection), "cells": cells, "skipped": skipped})
    report = SubmitReport(folder=folder, skipped=skipped)
    states = {s.name: s for s in grid_status(selection)}
    todo = []
    for cell in cells:
        name = cell_name(cell["strategy"], cell["dataset"])
        state = states[name].state if name in states else "not submitted"
        if state in ("done", "running", "pending", "unknown"):
            report.kept[name] = state
        else:
            todo.append(cell)
    if not todo:
        return report
    executor = submitit.AutoExecutor(folder=folder / "slurm", cluster=cluster)
    executor.update_parameters(**_job_parameters(settings, cluster, f"captionlab-grid-{selection.key()}"))
    jobs = []
    with executor.batch():
        for cell in todo:
            cell_dir = folder / "cells" / cell_name(cell["strategy"], cell["dataset"])
            cell_dir.mkdir(parents=True, exist_ok=True)
            for marker in ("done.json", "failed.json"):
                (cell_dir / marker).unlink(missing_ok=True)
            argv = cell_argv(selection, cell, settings.batch_size)
            jobs.append((cell_dir, executor.submit(run_cell, argv, str(cell_dir), settings.gpus_per_cell)))
    for cell_dir, job in jobs:
        atomic.write_json(cell_dir / "job.json", {"job_id": str(job.job_id), "cluster": cluster,
                                                  "submitted": time.time()})
        report.submitted.append(cell_dir.name)
    return report


def submit_evaluation(argv: Sequence[str], folder: Path, settings: SlurmSettings, cluster: str = "slurm") -> str:
    """One evaluation (`argv` follows `python -m captionlab`) as one Slurm job whose files are in `folder`, as a
    grid's cell's are (`folder_state` tells how it goes); returns the job id."""
    import submitit

    _check_submission(settings, cluster)
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=folder / "slurm", cluster=cluster)
    executor.update_parameters(**_job_parameters(settings, cluster, f"captionlab-{folder.name}"))
    job = executor.submit(run_cell, list(argv), str(folder), settings.gpus_per_cell)
    atomic.write_json(folder / "job.json", {"job_id": str(job.job_id), "cluster": cluster, "submitted": time.time()})
    return str(job.job_id)


def _check_submission(settings: SlurmSettings, cluster: str) -> None:
    if cluster not in CLUSTERS:
        raise EvaluationError(f"cluster: choose one of {', '.join(CLUSTERS)}")
    if cluster == "slurm" and not slurm_available():
        raise EvaluationError("Slurm is not available here: `sbatch` is not on PATH. Submit from a Slurm login "
                              "node, or evaluate here (under accelerate launch for several GPUs)")
    if cluster == "slurm" and not settings.partition:
        raise EvaluationError("a partition is needed to submit to Slurm (--partition)")
    if settings.gpus_per_cell < 1:
        raise EvaluationError(f"GPUs per cell must be at least 1, got {settings.gpus_per_cell}")


def _job_parameters(settings: SlurmSettings, cluster: str, name: str) -> dict:
    parameters = {"timeout_min": settings.time_min, "nodes": 1, "tasks_per_node": 1, "name": name}
    if cluster == "slurm":
        parameters.update(slurm_partition=settings.partition, gpus_per_node=settings.gpus_per_cell)
        parameters.update({k: getattr(settings, k) for k in ("cpus_per_task", "mem_gb") if getattr(settings, k)})
    return parameters


def run_cell(argv: Sequence[str], cell_dir: str, gpus: int = 1) -> dict:
    """What an array task runs: the cell's evaluation (on `gpus` GPUs), then done.json or failed.json."""
    from captionlab.evaluation.launch import evaluate_command

    command = evaluate_command(argv, gpus)
    # stderr goes to the task's log as it is written; stdout (the result's JSON) is read, then logged too
    completed = subprocess.run(command, cwd=paths.PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL)
    print(completed.stdout, flush=True)
    folder = Path(cell_dir)
    if completed.returncode != 0:
        atomic.write_json(folder / "failed.json", {"returncode": completed.returncode, "finished": time.time()})
        raise RuntimeError(f"the evaluation exited with {completed.returncode}; its log says why")
    try:
        result = json.loads(completed.stdout)
    except json.JSONDecodeError:
        result = {}
    summary = {key: result.get(key) for key in ("metrics", "n_images", "split", "results_path")}
    atomic.write_json(folder / "done.json", {**summary, "finished": time.time()})
    return summary


def grid_status(selection: GridSelection) -> list[CellState]:
    """The state of each cell the grid has planned (none before its first submission)."""
    folder = grid_folder(selection)
    try:
        planned = json.loads((folder / "grid.json").read_text())["cells"]
    except (OSError, json.JSONDecodeError, KeyError):
        return []
    return [_cell_state(folder, cell["strategy"], cell["dataset"]) for cell in planned]


def _cell_state(folder: Path, strategy: str, dataset: str) -> CellState:
    return folder_state(folder / "cells" / cell_name(strategy, dataset), folder / "slurm", strategy, dataset)


def folder_state(cell_dir: Path, slurm_dir: Path, strategy: str = "", dataset: str = "") -> CellState:
    """How the job of `cell_dir` goes (its submitit files in `slurm_dir`)."""
    done = atomic.read_json_object(cell_dir / "done.json")
    job = atomic.read_json_object(cell_dir / "job.json")
    state = CellState(strategy, dataset, "not submitted", job_id=job.get("job_id"))
    if done:
        cider = (done.get("metrics") or {}).get("CIDEr")
        state.state = "done"
        state.detail = f"{done.get('n_images')} images" + (f", CIDEr {cider:.1f}" if cider is not None else "")
        return state
    if not job:
        return state
    failed = atomic.read_json_object(cell_dir / "failed.json")
    alive = None if failed else _job_alive(slurm_dir, job)
    if alive in ("running", "pending", "unknown"):
        state.state = alive
        if alive == "unknown":
            state.detail = "submitted; its state cannot be asked here (no sacct)"
        return state
    state.state = "failed"
    state.detail = (f"the evaluation exited with {failed['returncode']}" if failed
                    else f"the job ended without finishing ({alive})")
    state.log_tail = _log_tail(slurm_dir, job["job_id"])
    return state


def _job_alive(slurm_dir: Path, job: dict) -> str:
    """running / pending / unknown, or the reason it is not alive."""
    if job.get("cluster") == "local":  # submitit's local job id is its controller's pid
        return "running" if _process_alive(int(job["job_id"])) else "process gone"
    if shutil.which("sacct") is None:
        return "unknown"
    import submitit

    try:
        slurm_state = submitit.SlurmJob(folder=slurm_dir, job_id=job["job_id"]).state
    except Exception:
        return "unknown"
    word = slurm_state.split()[0] if slurm_state else "UNKNOWN"
    if word.startswith("UNKNOWN"):
        return "unknown"
    if word in SLURM_ALIVE:
        return "pending" if word == "PENDING" else "running"
    return word


def _process_alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own finished child
    except ChildProcessError:
        pass
    return processes.is_live(pid)


def _log_tail(slurm_dir: Path, job_id: str) -> list[str]:
    """The last lines of the job's stderr (else stdout), where the evaluation's error is: cut before submitit's own
    report of the cell's exception (its traceback says only that the evaluation exited)."""
    from submitit.core.utils import JobPaths

    job_paths = JobPaths(slurm_dir, job_id=job_id, task_id=0)
    for path in (job_paths.stderr, job_paths.stdout):
        try:
            lines = path.read_text(errors="replace").rstrip().splitlines()
        except OSError:
            continue
        ends = [n for n, line in enumerate(lines) if line.startswith("submitit ERROR")]
        lines = [line for line in lines[:ends[-1] if ends else None] if not line.startswith("submitit INFO")]
        if lines:
            return lines[-LOG_TAIL_LINES:]
    return []
