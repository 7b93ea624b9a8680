"""How far each step of a study got, read from disk: the study folder's records, the run folders and the runs
registry, and each evaluation cell's markers. Reading writes nothing but the registry's crash marks (`refresh_runs`).

A study folder (`plan.default_out`):
    study.json                     what was asked (model, datasets.yaml, strategies, benchmarks, overrides)
    trainings/<strategy>.json      the run this study trains the strategy in: {run_id, run_dir, recipe, backend}
    cells/<strategy>--<dataset>/   one evaluation cell: job.json (who runs it), done.json or failed.json
    results/, runs/                the report's inputs and outputs (tables.md, fig2_cider.csv/.svg)

States: pending (not started), running (a live process or a queued Slurm job), finished, failed (with why; rerunning
the study resumes it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from captionlab import atomic

PENDING, RUNNING, FINISHED, FAILED = "pending", "running", "finished", "failed"
STATES = (PENDING, RUNNING, FINISHED, FAILED)
REPORT_FILES = ("tables.md", "fig2_cider.csv", "fig2_cider.svg")


@dataclass
class StepState:
    kind: str  # prepare, train, evaluate, report
    name: str
    state: str
    progress: str = ""
    detail: str = ""


def study_json(out: Path) -> dict:
    return atomic.read_json_object(Path(out) / "study.json")


def training_record(out: Path, strategy: str) -> dict:
    return atomic.read_json_object(Path(out) / "trainings" / f"{strategy}.json")


def cell_dir(out: Path, cell_name: str) -> Path:
    return Path(out) / "cells" / cell_name


def training_state(out: Path, strategy: str) -> StepState:
    """A training's state from its run folder (the runs registry says whether its process lives)."""
    from captionlab.training import runs_db
    from captionlab.training.run_folder import RunFolder, is_complete_checkpoint

    record = training_record(out, strategy)
    if not record:
        return StepState("train", strategy, PENDING)
    folder = RunFolder(Path(record["run_dir"]))
    status = folder.read_status()
    row = runs_db.get_run(record["run_id"]) if record.get("run_id") else None
    registered = (row or {}).get("state") or status.get("state")
    step, total = status.get("step"), status.get("total_steps")
    progress = f"step {step or 0}/{total}" if total else ""
    if status.get("epoch") is not None and total:
        progress += f", epoch {status.get('epoch')}"
    if registered == "finished" and status.get("state") == "finished":
        return StepState("train", strategy, FINISHED, progress, str(folder.path))
    if registered in ("queued", "running") and (row is not None or _trainer_lives(status)):
        return StepState("train", strategy, RUNNING, progress, (row or {}).get("message") or str(folder.path))
    if row is None and registered in ("queued", "running"):
        registered = "crashed"  # not in the registry (lost) and no live trainer: nothing will finish it
    resumable = any(is_complete_checkpoint(folder.path / name) for name in ("last", "previous"))
    why = (row or {}).get("message") or status.get("message") or registered or "unknown"
    then = ("rerunning the study resumes it from its last checkpoint" if resumable
            else "rerunning the study starts it again")
    return StepState("train", strategy, FAILED, progress, f"{registered}: {why}; {then}")


def _trainer_lives(status: dict) -> bool:
    from captionlab import processes

    return isinstance(status.get("pid"), int) and processes.is_live(status["pid"])


def cell_state(out: Path, name: str) -> StepState:
    """An evaluation cell's state from its markers (the same as a Slurm grid cell's, `slurm_grid.folder_state`)."""
    from captionlab.evaluation.slurm_grid import folder_state

    folder = cell_dir(out, name)
    found = folder_state(folder, folder / "slurm")
    kind = "evaluate"
    if found.state == "done":
        return StepState(kind, name, FINISHED, found.detail)
    if found.state in ("running", "pending", "unknown"):
        return StepState(kind, name, RUNNING, "queued" if found.state == "pending" else "", found.detail)
    if found.state == "not submitted":
        return StepState(kind, name, PENDING)
    tail = f"; log: {found.log_tail[-1]}" if found.log_tail else ""
    return StepState(kind, name, FAILED, "", f"{found.detail}{tail}; rerunning the study runs it again (it resumes "
                                                                 "from its predictions)")


def report_state(out: Path, cell_states: list[StepState]) -> StepState:
    tables = Path(out) / "results" / "tables.md"
    if not tables.exists():
        return StepState("report", "tables and Fig. 2", PENDING)
    newest_cell = max((_done_time(out, s.name) for s in cell_states), default=0.0)
    if newest_cell > tables.stat().st_mtime:
        return StepState("report", "tables and Fig. 2", PENDING, "", "results newer than the report")
    return StepState("report", "tables and Fig. 2", FINISHED, "", str(tables.parent))


def _done_time(out: Path, name: str) -> float:
    done = cell_dir(out, name) / "done.json"
    return done.stat().st_mtime if done.exists() else 0.0


def mark_local_cell(folder: Path, pid: int) -> None:
    """The cell is run by process `pid` on this machine (`folder_state` checks it lives)."""
    folder.mkdir(parents=True, exist_ok=True)
    for marker in ("done.json", "failed.json"):
        (folder / marker).unlink(missing_ok=True)
    atomic.write_json(folder / "job.json", {"job_id": str(pid), "cluster": "local", "submitted": time.time()})


def preparation_state(name: str) -> StepState:
    """The embedded study's preparation (the zoo's world, clip and base steps): finished when its output exists."""
    from captionlab import paths

    made = {"world": paths.world_dir() / "datasets.yaml",
            "clip": paths.CHECKPOINTS_DIR / "embedded" / "clip" / "config.json",
            "base": paths.CHECKPOINTS_DIR / "embedded" / "base" / "model.safetensors"}[name]
    return StepState("prepare", name, FINISHED if made.exists() else PENDING, "", str(made))


def summary(states: list[StepState]) -> str:
    counts = {s: sum(1 for st in states if st.state == s) for s in STATES}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)
