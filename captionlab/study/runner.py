"""Run a study's plan: what finished is skipped, what was interrupted resumes, the rest runs in order.

- preparation (embedded model only): the zoo's world, clip and base steps, each skipped when its output exists;
- trainings, one at a time: started through the launcher (`launch_run`, under `accelerate launch` for --gpus N, or
  `submit_slurm` with --slurm), so each is a registered run folder the Train and Energy tabs show; a stopped or
  crashed one resumes from its last checkpoint (`resume_run`), a live one is waited for, never started twice;
- evaluation cells: with one GPU in this process (`evaluator.evaluate`), with --gpus N as the evaluation command
  under `accelerate launch` (`slurm_grid.run_cell`), with --slurm as one Slurm job each (`submit_evaluation`); a cell
  whose training has not finished waits for a later run of the study; each records its result where the Benchmarks
  tab reads it (the workspace's results database);
- the report, once every cell is done (`captionlab.study.report`).

With --slurm the command submits what is ready and returns; running it again submits what became ready.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from captionlab import atomic
from captionlab.study import state as states
from captionlab.study.plan import EvaluationCell, StudyPlan, TrainingStep

POLL_S = 2.0


class StudyError(RuntimeError):
    """A study step could not start; the message says why."""


@dataclass(frozen=True)
class SlurmOptions:
    partition: str
    time_min: int = 24 * 60
    executor: str = "slurm"  # or "local": submitit's local executor (the Slurm path on this machine)


@dataclass
class Outcome:
    finished: int = 0
    failed: int = 0
    waiting: int = 0  # submitted to Slurm, or waiting for a training that has not finished

    @property
    def code(self) -> int:
        return 1 if self.failed else 3 if self.waiting else 0


def run_study(plan: StudyPlan, *, slurm: SlurmOptions | None = None, say: Callable[[str], None] = print,
              trainer_cmd: list[str] | None = None) -> Outcome:
    """Run every step of `plan` that is not finished (see the module docstring); 0/1/3 as Outcome.code."""
    if plan.datasets_config is None and plan.model != "embedded":
        raise StudyError("the study needs the benchmarks: give --datasets DATASETS_YAML (python -m captionlab data "
                         "fetch --all --root DIR writes one); --dry-run shows the plan without it")
    plan.out.mkdir(parents=True, exist_ok=True)
    lock = _hold_study_lock(plan.out)
    try:
        return _run_steps(plan, slurm, say, trainer_cmd)
    finally:
        lock.close()  # releases the flock


def _run_steps(plan: StudyPlan, slurm: SlurmOptions | None, say, trainer_cmd) -> Outcome:
    _write_study_json(plan)
    outcome = Outcome()
    for name in plan.preparation:
        _prepare(name, say)
    for training in plan.trainings:
        _count(outcome, _train(plan, training, slurm, say, trainer_cmd))
    for cell in plan.cells:
        _count(outcome, _evaluate(plan, cell, slurm, say))
    if outcome.failed or outcome.waiting:
        say(f"report: not written yet ({outcome.failed} step(s) failed, {outcome.waiting} waiting); run the same "
            "command again to continue")
        return outcome
    report = states.report_state(plan.out, [states.cell_state(plan.out, c.name) for c in plan.cells])
    if report.state == states.FINISHED and _report_covers(plan):
        say(f"report: up to date in {report.detail}")
        return outcome
    from captionlab.study.report import write_report

    written = write_report(plan)
    say(f"report: {', '.join(str(p) for p in written)}")
    return outcome


def _report_covers(plan: StudyPlan) -> bool:
    """The report was written for this selection of captioners and benchmarks (a rerun may choose others)."""
    return atomic.read_json_object(plan.out / "results" / "report.json").get("cells") == [c.name for c in plan.cells]


def _hold_study_lock(out: Path):
    """One `train study` per study folder at a time (two would start the same training twice): an flock on
    <out>/study.lock, held until the handle is closed or this process ends, however it ends."""
    import fcntl

    handle = (out / "study.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StudyError(f"this study ({out}) is being run by {holder}; wait for it, or stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _count(outcome: Outcome, result: str) -> None:
    if result == states.FINISHED:
        outcome.finished += 1
    elif result == states.FAILED:
        outcome.failed += 1
    else:
        outcome.waiting += 1


def _write_study_json(plan: StudyPlan) -> None:
    atomic.write_json(plan.out / "study.json", {
        "model": plan.model, "datasets_config": None if plan.datasets_config is None else str(plan.datasets_config),
        "captioners": plan.captioners, "datasets": plan.datasets, "limit": plan.limit, "gpus": plan.gpus,
        "max_new_tokens": plan.max_new_tokens,
        "hardware": plan.hardware.name, "trainings": [{"strategy": t.strategy, "recipe": t.recipe,
                                                       "overrides": list(t.overrides)} for t in plan.trainings],
        "updated": time.time()})


def _prepare(name: str, say: Callable[[str], None]) -> None:
    from captionlab import paths, zoo

    if states.preparation_state(name).state == states.FINISHED:
        return
    say(f"prepare {name}: the zoo's step")
    getattr(zoo, f"step_{name}")(paths.CHECKPOINTS_DIR / "embedded")


# --- trainings ---------------------------------------------------------------------------------------------------


def _train(plan: StudyPlan, training: TrainingStep, slurm: SlurmOptions | None, say, trainer_cmd) -> str:
    from captionlab.training import launcher

    current = states.training_state(plan.out, training.strategy)
    label = f"train {training.strategy} ({training.recipe})"
    if current.state == states.FINISHED:
        say(f"{label}: finished earlier ({current.progress})")
        return states.FINISHED
    record = states.training_record(plan.out, training.strategy)
    try:
        if current.state == states.FAILED and _resumable(record):
            say(f"{label}: resuming from its last checkpoint ({current.progress})")
            launcher.resume_run(record["run_id"])
        elif current.state != states.RUNNING:
            info = _launch(plan, training, slurm, trainer_cmd)
            atomic.write_json(plan.out / "trainings" / f"{training.strategy}.json",
                              {"run_id": info.run_id, "run_dir": str(info.run_dir), "recipe": training.recipe,
                               "backend": info.backend})
            say(f"{label}: started {info.run_id}" + (f" (Slurm job {info.slurm_job_id})" if info.slurm_job_id else ""))
        else:
            say(f"{label}: already running ({current.progress or current.detail})"
                + ("" if slurm is not None else "; waiting for it"))
    except launcher.LaunchError as exc:
        say(f"{label}: could not start: {exc}")
        return states.FAILED
    if slurm is not None:
        return states.RUNNING  # a later run of the study picks up its result
    return _wait_for_training(plan, training.strategy, label, say)


def _resumable(record: dict) -> bool:
    from captionlab.training.run_folder import is_complete_checkpoint

    return bool(record) and any(is_complete_checkpoint(Path(record["run_dir"]) / n) for n in ("last", "previous"))


def _launch(plan: StudyPlan, training: TrainingStep, slurm: SlurmOptions | None, trainer_cmd):
    from captionlab.training import launcher

    name = f"study-{plan.model}-{training.strategy}"
    if slurm is not None:
        return launcher.submit_slurm(training.recipe, list(training.overrides), name, partition=slurm.partition,
                                     gpus=plan.gpus, time_min=slurm.time_min)
    return launcher.launch_run(training.recipe, list(training.overrides), name=name, gpus=plan.gpus,
                               trainer_cmd=trainer_cmd)


def _wait_for_training(plan: StudyPlan, strategy: str, label: str, say) -> str:
    """Wait for the training's process; on Ctrl-C (or SIGTERM) stop it, so that it checkpoints and a rerun resumes."""
    from captionlab.training import launcher

    shown = None
    try:
        while True:
            launcher.refresh_runs()
            current = states.training_state(plan.out, strategy)
            if current.progress != shown and current.progress:
                say(f"{label}: {current.progress}")
                shown = current.progress
            if current.state in (states.FINISHED, states.FAILED):
                if current.state == states.FAILED:
                    say(f"{label}: {current.detail}")
                return current.state
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        record = states.training_record(plan.out, strategy)
        say(f"{label}: interrupted; stopping the trainer (it saves a checkpoint; rerun the study to resume)")
        try:
            launcher.stop_run(record["run_id"])
        except launcher.LaunchError as exc:
            say(f"{label}: {exc}")
        raise


# --- evaluation cells --------------------------------------------------------------------------------------------


def _evaluate(plan: StudyPlan, cell: EvaluationCell, slurm: SlurmOptions | None, say) -> str:
    label = f"evaluate {cell.strategy} on {cell.dataset}"
    current = states.cell_state(plan.out, cell.name)
    if current.state == states.FINISHED:
        say(f"{label}: recorded earlier ({current.progress})")
        return states.FINISHED
    if current.state == states.RUNNING:
        say(f"{label}: already running ({current.detail or current.progress})")
        return states.RUNNING
    checkpoint = None
    if cell.needs_training:
        trained = states.training_state(plan.out, cell.needs_training)
        if trained.state != states.FINISHED:
            say(f"{label}: waiting for the {cell.needs_training} training ({trained.state})")
            return states.RUNNING
        checkpoint = states.training_record(plan.out, cell.needs_training)["run_dir"]
    folder = states.cell_dir(plan.out, cell.name)
    argv = _cell_argv(plan, cell, checkpoint)
    if slurm is not None:
        return _submit_cell(argv, folder, plan, slurm, label, say)
    states.mark_local_cell(folder, os.getpid())
    say(f"{label}: {'in this process' if plan.gpus == 1 else f'on {plan.gpus} processes'}")
    try:
        summary = (_evaluate_here(plan, cell, checkpoint) if plan.gpus == 1
                   else _run_cell_command(argv, folder, plan.gpus))
    except KeyboardInterrupt:
        atomic.write_json(folder / "failed.json", {"returncode": "interrupted", "finished": time.time()})
        raise
    except Exception as exc:  # the cell's failure is recorded and said; the study goes on with the others
        atomic.write_json(folder / "failed.json", {"returncode": 1, "error": str(exc), "finished": time.time()})
        say(f"{label}: failed: {exc}")
        return states.FAILED
    atomic.write_json(folder / "done.json", {**summary, "finished": time.time()})
    cider = (summary.get("metrics") or {}).get("CIDEr")
    say(f"{label}: {summary.get('n_images')} images" + (f", CIDEr {cider:.1f}" if cider is not None else ""))
    return states.FINISHED


def _cell_argv(plan: StudyPlan, cell: EvaluationCell, checkpoint: str | None) -> list[str]:
    """The evaluate command of the cell (what follows `python -m captionlab`), as a Slurm grid's cell runs it."""
    from captionlab.evaluation.slurm_grid import GridSelection, cell_argv

    selection = GridSelection(model=plan.model, strategies=(cell.strategy,), datasets=(cell.dataset,),
                              config=None if plan.datasets_config is None else str(plan.datasets_config),
                              limit=plan.limit, max_new_tokens=plan.max_new_tokens, skip_broken=True)
    return cell_argv(selection, {"strategy": cell.strategy, "dataset": cell.dataset, "checkpoint": checkpoint}, None)


def _evaluate_here(plan: StudyPlan, cell: EvaluationCell, checkpoint: str | None) -> dict:
    from captionlab.captioner import GenerationSettings, default_batch_size
    from captionlab.evaluation.evaluator import evaluate

    settings = GenerationSettings(max_new_tokens=plan.max_new_tokens, batch_size=default_batch_size(None))
    result = evaluate(plan.model, cell.strategy, cell.dataset, checkpoint=checkpoint, config_path=plan.datasets_config,
                      limit=plan.limit, settings=settings, skip_broken=True)
    return {"metrics": result.reported_metrics(), "n_images": result.n_images, "split": result.split,
            "results_path": str(result.results_path)}


def _run_cell_command(argv: list[str], folder: Path, gpus: int) -> dict:
    """The cell as the evaluate command under `accelerate launch` (its processes share the images)."""
    from captionlab.evaluation.slurm_grid import run_cell

    (folder / "done.json").unlink(missing_ok=True)
    summary = run_cell(argv, str(folder), gpus)  # writes done.json / failed.json itself
    return summary


def _submit_cell(argv: list[str], folder: Path, plan: StudyPlan, slurm: SlurmOptions, label: str, say) -> str:
    from captionlab.evaluation.slurm_grid import SlurmSettings, submit_evaluation
    from captionlab.evaluation.targets import EvaluationError

    settings = SlurmSettings(partition=slurm.partition, time_min=slurm.time_min, gpus_per_cell=plan.gpus)
    for marker in ("done.json", "failed.json"):
        (folder / marker).unlink(missing_ok=True)
    try:
        job_id = submit_evaluation(argv, folder, settings, cluster=slurm.executor)
    except (EvaluationError, OSError, RuntimeError) as exc:
        say(f"{label}: Slurm submission failed: {exc}")
        return states.FAILED
    say(f"{label}: submitted as job {job_id}")
    return states.RUNNING


def plan_summary(plan: StudyPlan) -> dict:
    """The plan as JSON-ready data (the dry run's --json)."""
    return {"model": plan.model, "out": str(plan.out), "hardware": plan.hardware.name, "gpus": plan.gpus,
            "datasets_config": None if plan.datasets_config is None else str(plan.datasets_config),
            "trainings": [{**asdict(t), "steps": t.steps} for t in plan.trainings],
            "cells": [{**asdict(c), "name": c.name} for c in plan.cells], "notes": plan.notes}
