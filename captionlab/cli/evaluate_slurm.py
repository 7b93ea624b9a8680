"""`evaluate --grid --slurm` and `evaluate --grid --status`: the grid's cells as a Slurm job array, and their state.

Called by `captionlab.cli.evaluate` (whose parser holds the options); the work is in
`captionlab.evaluation.slurm_grid`.
"""

from __future__ import annotations

import argparse
import json

from captionlab.cli import UserError


def selection_of(args: argparse.Namespace, datasets: list[str]):
    """The GridSelection the command line names (the same options name the same grid)."""
    from captionlab.evaluation.slurm_grid import GridSelection
    from captionlab.strategies import PAPER_STRATEGIES

    strategies = [s.strip() for s in (args.strategies or "").split(",") if s.strip()] or list(PAPER_STRATEGIES)
    checkpoints = None if args.checkpoints is None else str(args.checkpoints.expanduser().resolve())
    config = None if args.config is None else str(args.config.expanduser().resolve())
    return GridSelection(model=args.model, strategies=tuple(strategies), datasets=tuple(datasets), config=config,
                         checkpoints=checkpoints, limit=args.limit, max_new_tokens=args.max_new_tokens,
                         skip_broken=args.skip_broken)


def run_slurm_grid(args: argparse.Namespace, datasets: list[str]) -> int:
    from captionlab.evaluation import slurm_grid
    from captionlab.evaluation.targets import EvaluationError
    from captionlab.models.registry import ModelNotFoundError

    if args.slurm and args.status:
        raise UserError("give --slurm (submit) or --status (show), not both")
    selection = selection_of(args, datasets)
    if args.status:
        cells = slurm_grid.grid_status(selection)
        if not cells:
            raise UserError(f"this grid has not been submitted ({slurm_grid.grid_folder(selection)} has no "
                            "grid.json): submit it with --slurm")
        print(json.dumps([cell.__dict__ for cell in cells], indent=2) if args.json else format_status(cells))
        return 0 if all(cell.state == "done" for cell in cells) else 1
    settings = slurm_grid.SlurmSettings(partition=args.partition, time_min=args.time_min,
                                        gpus_per_cell=args.gpus_per_cell, cpus_per_task=args.cpus_per_task,
                                        mem_gb=args.mem_gb, batch_size=args.batch_size)
    try:
        report = slurm_grid.submit_grid(selection, settings, cluster=args.executor)
    except (EvaluationError, ModelNotFoundError) as exc:
        raise UserError(str(exc)) from None
    print(format_report(report))
    return 0


def format_report(report) -> str:
    lines = [f"grid folder: {report.folder}"]
    if report.submitted:
        lines.append(f"submitted {len(report.submitted)} cell(s) as one job array: {', '.join(report.submitted)}")
    else:
        lines.append("nothing to submit: every cell is done or running")
    for name, state in report.kept.items():
        lines.append(f"kept {name}: {state}")
    for strategy, why in report.skipped.items():
        lines.append(f"skipped {strategy}: {why}")
    lines.append("see how it goes: the same command with --status instead of --slurm")
    return "\n".join(lines)


def format_status(cells) -> str:
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell.state] = counts.get(cell.state, 0) + 1
    lines = [", ".join(f"{n} {state}" for state, n in counts.items()),
             f"{'cell':<32}{'state':<15}{'job':<14}detail"]
    for cell in cells:
        lines.append(f"{cell.name:<32}{cell.state:<15}{cell.job_id or '-':<14}{cell.detail}")
    for cell in cells:
        if cell.log_tail:
            lines += ["", f"--- {cell.name} (job {cell.job_id}): end of its log ---", *cell.log_tail]
    return "\n".join(lines)
