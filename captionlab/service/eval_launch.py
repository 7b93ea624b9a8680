"""Where an evaluation job of the app runs: this machine's GPUs (under accelerate launch for several) or a Slurm
job (through submitit, as `evaluate --grid --slurm` submits its cells). The Benchmarks tab asks this module
whether Slurm is offered; `jobs` starts the job. Imports nothing heavy at import time (the UI imports it)."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from captionlab import atomic

MAX_GPUS = 64  # one node's worth, as the Train tab's
SLURM_TIME_MIN = 240


def slurm_available() -> bool:
    """Whether the app offers Slurm: `sbatch` is on PATH (this is a Slurm login or compute node)."""
    return shutil.which("sbatch") is not None


def gpu_help() -> str:
    return ("GPUs: one process per GPU under `accelerate launch`, each captioning its share of the images; the main "
            "one scores them once (the same predictions and scores as one GPU).")


def validate_gpus(gpus: int | float | str | None) -> int:
    """The number of GPUs as a whole number in 1..MAX_GPUS; ValueError naming the field."""
    if gpus is None or (isinstance(gpus, str) and not gpus.strip()):
        return 1
    try:
        number = float(gpus)
    except (TypeError, ValueError):
        raise ValueError(f"GPUs: {gpus!r} is not a whole number") from None
    if not math.isfinite(number) or not number.is_integer() or not 1 <= number <= MAX_GPUS:
        raise ValueError(f"GPUs: must be a whole number between 1 and {MAX_GPUS}")
    return int(number)


def submit_to_slurm(evaluate_args: list[str], folder: Path, partition: str, gpus: int) -> str:
    """Submit one evaluation as a Slurm job whose files are in the job's folder; a message for the user."""
    from captionlab.evaluation.slurm_grid import SlurmSettings, submit_evaluation
    from captionlab.evaluation.targets import EvaluationError

    partition = (partition or "").strip()
    if not slurm_available():
        return "Error: Slurm is not available here: `sbatch` is not on PATH"
    if not partition or not all(c.isalnum() or c in "-_." for c in partition):
        return "Error: partition: give the Slurm partition's name (letters, digits, '-', '_', '.')"
    settings = SlurmSettings(partition=partition, time_min=SLURM_TIME_MIN, gpus_per_cell=gpus)
    try:
        job_id = submit_evaluation([*evaluate_args, "--json"], folder, settings)
    except (EvaluationError, OSError, RuntimeError) as exc:
        return f"Error: Slurm submission failed: {exc}"
    record = json.loads((folder / "job.json").read_text())
    atomic.write_json(folder / "job.json", {**record, "job": folder.name, "argv": evaluate_args,
                                            "slurm_job_id": job_id, "pid": None, "state": "submitted to Slurm",
                                            "created": record.get("submitted", time.time())})
    return (f"Submitted {folder.name} as Slurm job {job_id} on {partition} ({gpus} GPU(s)); "
            f"its log: {folder / 'slurm'}")


def slurm_job_state(folder: Path) -> str:
    """done / running / pending / failed ... of the Slurm job in a job folder, for the jobs panel."""
    from captionlab.evaluation.slurm_grid import folder_state

    state = folder_state(folder, folder / "slurm")
    word = SLURM_STATE_WORDS.get(state.state, state.state)  # the runs' and local jobs' words where one fits
    return f"Slurm {state.job_id}: {word}" + (f" ({state.detail})" if state.detail else "")


SLURM_STATE_WORDS = {"done": "finished", "pending": "queued"}
