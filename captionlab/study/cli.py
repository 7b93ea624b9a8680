"""`python -m train study ...`: run, plan (--dry-run) or show (status) the study of one model.

    python -m train study --model llava-1.5-7b --datasets data/datasets.yaml [--gpus N | --slurm --partition P]
    python -m train study --model llava-1.5-7b --dry-run [--hardware h100]   # the plan, nothing run
    python -m train study status [--model NAME] [--out DIR]                 # each step's state

Rerun the same command to continue a study: finished steps are skipped, an interrupted training resumes from its
last checkpoint, a cell already recorded is not evaluated again. Exit codes: 0 done, 1 a step failed, 2 bad input,
3 steps still running or waiting (Slurm jobs, or trainings they wait for).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from captionlab.study import estimates


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("study", help="the paper's whole protocol for one model: trainings, grid, report",
                                   description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=["run", "status"], default="run",
                        help="run (default: run what is not finished) or status (each step's state)")
    parser.add_argument("--model", help="a model with recipes under train/recipes (llava-1.5-7b, llava-1.6-7b, "
                                        "embedded)")
    parser.add_argument("--datasets", type=Path, metavar="CONFIG",
                        help="datasets.yaml naming the benchmarks (python -m captionlab data fetch --all writes one)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per training and evaluation (accelerate launch)")
    parser.add_argument("--slurm", action="store_true", help="submit the trainings and cells as Slurm jobs")
    parser.add_argument("--partition", help="Slurm partition (with --slurm)")
    parser.add_argument("--time-min", type=int, default=24 * 60, help="Slurm time limit per job in minutes")
    parser.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                        help="local: the evaluation cells through submitit's local executor (their Slurm path, run on "
                             "this machine); trainings are submitted with sbatch either way")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (steps, counts, estimates); run nothing")
    parser.add_argument("--out", type=Path, help="the study's folder (default: <workspace>/studies/<model>)")
    parser.add_argument("--strategies", help="comma-separated captioners to include (default: all of the study's)")
    parser.add_argument("--benchmarks", help="comma-separated benchmarks (default: coco,nocaps,cc3m,vizwiz,textcaps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a training setting for every training (e.g. max_train_images=64); repeatable")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images of each benchmark")
    parser.add_argument("--max-new-tokens", type=int, help="longest caption in tokens (default: the evaluate "
                                                           "command's)")
    parser.add_argument("--hardware", choices=sorted(estimates.HARDWARE), default="h200",
                        help="the GPU the dry run's estimates are for (default h200, where the rates were measured)")
    parser.add_argument("--json", action="store_true", help="print the plan or the states as JSON")
    parser.set_defaults(func=run_command)


def _split(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def build_from_args(args: argparse.Namespace):
    from captionlab.study.plan import build_plan

    return build_plan(args.model, datasets_config=args.datasets, strategies=_split(args.strategies),
                      datasets=_split(args.benchmarks), overrides=args.overrides, limit=args.limit,
                      hardware=args.hardware, gpus=args.gpus, out=args.out,
                      max_new_tokens=args.max_new_tokens)


def run_command(args: argparse.Namespace) -> int:
    from captionlab.study.plan import PlanError
    from captionlab.study.runner import SlurmOptions, StudyError, run_study

    if args.action == "status":
        return show_status(args)
    if not args.model:
        print("error: give --model (python -m train study --model llava-1.5-7b ...)", file=sys.stderr)
        return 2
    if args.slurm and not args.partition and args.executor == "slurm":
        print("error: --slurm needs --partition", file=sys.stderr)
        return 2
    try:
        plan = build_from_args(args)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        from captionlab.study.runner import plan_summary

        print(json.dumps(plan_summary(plan), indent=1, default=str) if args.json else format_plan(plan))
        return 0
    slurm = SlurmOptions(args.partition or "", args.time_min, args.executor) if args.slurm else None
    signal.signal(signal.SIGTERM, _interrupt)  # a killed study stops its trainer cleanly, as Ctrl-C does
    try:
        outcome = run_study(plan, slurm=slurm, say=_say)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("study interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    _say(f"done: {outcome.finished} finished, {outcome.failed} failed, {outcome.waiting} running or waiting"
         f" (python -m train study status --model {plan.model}" + (f" --out {args.out}" if args.out else "") + ")")
    return outcome.code


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _say(message: str) -> None:
    import time

    print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _hours(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def format_plan(plan) -> str:
    """The dry run's text: every training, every cell, the total, and what the numbers come from."""
    total, missing = plan.total_gpu_hours()
    lines = [f"Study of {plan.model}: {len(plan.trainings)} training(s), {len(plan.cells)} evaluation cell(s) "
             f"({len(plan.captioners)} captioners x {len(plan.datasets)} benchmarks), then the report",
             f"Folder: {plan.out}",
             f"Data: {plan.datasets_config or 'no datasets.yaml (published split sizes)'}",
             f"GPUs: {plan.gpus} x {plan.hardware.name} (GPU hours below are estimates: {plan.hardware.basis})",
             *[f"Note: {note}" for note in plan.notes], ""]
    if plan.preparation:
        lines += [f"Preparation (the zoo's steps, skipped where their output exists): {', '.join(plan.preparation)}",
                  ""]
    lines.append(f"{'training':<17}{'recipe':<34}{'epochs':>6}{'seq/epoch':>11}{'steps':>9}{'est. GPU h':>12}")
    for t in plan.trainings:
        per_epoch = t.counted.sequences_per_epoch
        lines.append(f"{t.strategy:<17}{t.recipe:<34}{t.epochs:>6}{'?' if per_epoch is None else f'{per_epoch:,}':>11}"
                     f"{'?' if t.steps is None else f'{t.steps:,}':>9}{_hours(t.estimate.gpu_hours):>12}")
        lines.append(f"{'':<17}steps: {t.counted.source}; batch {t.batch_size}")
        lines.append(f"{'':<17}GPU h: {t.estimate.basis}")
    lines += ["", f"{'evaluation cell':<34}{'images':>9}{'after training':>17}{'est. GPU h':>12}"]
    for c in plan.cells:
        lines.append(f"{c.name:<34}{'?' if c.images is None else f'{c.images:,}':>9}{c.needs_training or '-':>17}"
                     f"{_hours(c.estimate.gpu_hours):>12}")
    bases = sorted({c.estimate.basis for c in plan.cells})
    lines += [f"  cells' GPU h: {basis}" for basis in bases]
    steps = sum(t.steps or 0 for t in plan.trainings)
    lines += ["", f"Report: {plan.out / 'results'}/tables.md (Tables 1-4), fig2_cider.csv and fig2_cider.svg (Fig. 2)",
              "", f"Total: {len(plan.trainings)} trainings ({steps:,} optimizer steps), {len(plan.cells)} evaluation "
                  f"cells; estimated {total:,.1f} GPU hours on {plan.hardware.name} (about {total / plan.gpus:,.1f} h "
                  f"on {plan.gpus} GPU(s) if the work scales linearly), an estimate, not a measurement"]
    if missing:
        lines.append(f"Not estimated (nothing measured applies), so not in the total: {', '.join(missing)}")
    return "\n".join(lines)


def show_status(args: argparse.Namespace) -> int:
    from captionlab.study import plan as plans
    from captionlab.study.status import folders, states_of

    found = folders(args.model, args.out)
    if not found:
        where = args.out or (plans.default_out(args.model) if args.model else plans.default_out("x").parent)
        print(f"no study yet in {where}: start one with python -m train study --model NAME", file=sys.stderr)
        return 1
    everything = {}
    for folder in found:
        try:
            everything[str(folder)] = states_of(folder)
        except Exception as exc:  # one unreadable study does not hide the others
            everything[str(folder)] = exc
    if args.json:
        print(json.dumps({k: [s.__dict__ for s in v] if isinstance(v, list) else str(v)
                          for k, v in everything.items()}, indent=1))
        return 0
    from captionlab.study.status import format_states

    for folder, states in everything.items():
        print(f"error reading {folder}: {states}" if isinstance(states, Exception) else format_states(folder, states))
    return 0
