"""`python -m captionlab runs`: list training runs; launch, stop, resume and show one.

    python -m captionlab runs [--json]                    # every run, after noticing crashed ones
    python -m captionlab runs launch RECIPE [key=value ...] [--name N] [--gpus G] [--slurm-partition P]
    python -m captionlab runs show ID [--json]            # status, last metrics, log tail
    python -m captionlab runs stop ID
    python -m captionlab runs resume ID
    python -m captionlab runs rebuild                     # the registry again from the run folders

ID may be any unique prefix of a run id.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("runs", help="list, launch, stop, resume and show training runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=list_command)
    commands = parser.add_subparsers(dest="runs_command")

    launch = commands.add_parser("launch", help="validate a recipe and start its training run")
    launch.add_argument("recipe", help="recipe YAML (path or name under train/recipes)")
    launch.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    launch.add_argument("--name", help="a human name for the run (the id adds a timestamp)")
    launch.add_argument("--gpus", type=int, default=1, help="GPUs to train on (>1 uses accelerate)")
    launch.add_argument("--slurm-partition", help="submit to this Slurm partition instead of running here")
    launch.add_argument("--time-min", type=int, default=24 * 60, help="Slurm time limit in minutes")
    launch.set_defaults(func=launch_command)

    rebuild = commands.add_parser("rebuild", help="rebuild the runs registry from the run folders (it is "
                                                  "rebuilt by itself when it cannot be read)")
    rebuild.set_defaults(func=rebuild_command)

    for name, func, help_text in (("show", show_command, "status, last metrics and log tail of a run"),
                                  ("stop", stop_command, "stop a run (its whole process group)"),
                                  ("resume", resume_command, "resume a stopped or crashed run from last/")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("run_id", help="run id, or a unique prefix of one")
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        sub.set_defaults(func=func)
        if name == "stop":
            sub.add_argument("--grace", type=float, default=30.0,
                             help="seconds the trainer gets to checkpoint after SIGTERM before SIGKILL")


def list_command(args: argparse.Namespace) -> int:
    from captionlab.training.launcher import list_runs_with_status

    runs = list_runs_with_status()
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return 0
    if not runs:
        print("no runs yet: start one with `python -m captionlab runs launch RECIPE`")
        return 0
    columns = ("id", "name", "strategy", "model", "state", "step", "best val", "energy")
    rows = [(r["run_id"], r["name"], r["strategy"], r["model"], r["state"], _progress(r),
             _number(r["best_val_loss"]), format_energy(r)) for r in runs]
    widths = [max(len(str(v)) for v in column) for column in zip(columns, *rows)]
    for row in (columns, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def rebuild_command(args: argparse.Namespace) -> int:
    from captionlab.training.registry_rebuild import rebuild_registry

    print(rebuild_registry())
    return 0


def launch_command(args: argparse.Namespace) -> int:
    from captionlab.training import launcher

    try:
        if args.slurm_partition:
            info = launcher.submit_slurm(args.recipe, args.overrides, args.name, partition=args.slurm_partition,
                                         gpus=args.gpus, time_min=args.time_min)
        else:
            info = launcher.launch_run(args.recipe, args.overrides, args.name, gpus=args.gpus)
    except launcher.LaunchError as exc:
        _raise_user_error(exc)
    where = f"Slurm job {info.slurm_job_id}" if info.backend == "slurm" else f"pid {info.pid}"
    print(f"started {info.run_id} ({where})\n  folder: {info.run_dir}\n  log:    {info.run_dir / 'log.txt'}")
    return 0


def show_command(args: argparse.Namespace) -> int:
    from captionlab.training import launcher
    from captionlab.training.run_folder import RunFolder

    launcher.refresh_runs()
    row = launcher.run_with_status(_find_run(args.run_id))
    folder = RunFolder(Path(row["run_dir"]))
    metrics = launcher.tail_metrics(folder, rows=5)
    log = folder.log_tail(20)
    if getattr(args, "json", False):
        print(json.dumps({"run": row, "status": folder.read_status(), "last_metrics": metrics,
                          "energy": folder.read_energy(), "log_tail": log}, indent=2, default=str))
        return 0
    print(f"{row['run_id']}  ({row['name']})")
    for label, value in (("state", row["state"]), ("message", row["message"]), ("strategy", row["strategy"]),
                         ("model", row["model"]), ("dataset", row["dataset"]), ("recipe", row["recipe"]),
                         ("backend", row["backend"] + (f" job {row['slurm_job_id']}" if row["slurm_job_id"] else "")),
                         ("progress", _progress(row)), ("epoch", _number(row["epoch"])),
                         ("best val loss", _number(row["best_val_loss"])), ("energy", format_energy(row)),
                         ("folder", row["run_dir"])):
        if value:
            print(f"  {label:<14}{value}")
    print("last metrics:" if metrics else "last metrics: none yet")
    for metric in metrics:
        print("  " + json.dumps(metric, sort_keys=True))
    print("log tail:")
    print("\n".join("  " + line for line in (log or "(empty)").splitlines()))
    return 0


def stop_command(args: argparse.Namespace) -> int:
    from captionlab.training import launcher

    try:
        row = launcher.stop_run(_find_run(args.run_id)["run_id"], grace_s=args.grace)
    except launcher.LaunchError as exc:
        _raise_user_error(exc)
    print(f"{row['run_id']}: {row['state']}")
    return 0


def resume_command(args: argparse.Namespace) -> int:
    from captionlab.training import launcher

    try:
        info = launcher.resume_run(_find_run(args.run_id)["run_id"])
    except launcher.LaunchError as exc:
        _raise_user_error(exc)
    print(f"resumed {info.run_id} (pid {info.pid})" if info.backend == "local"
          else f"resumed {info.run_id} as Slurm job {info.slurm_job_id}")
    return 0


def format_energy(row: dict) -> str:
    """kWh with how it was obtained; an estimate is always marked as one."""
    kwh = row.get("energy_kwh")
    if kwh is None:
        return "-"
    method = row.get("energy_method") or "unknown method"
    if method == "estimate":
        return f"~{kwh:.4g} kWh (estimate)"
    return f"{kwh:.4g} kWh ({method})"


def _find_run(run_id: str) -> dict:
    from captionlab.cli import UserError
    from captionlab.training import runs_db

    try:
        return runs_db.find_run(run_id)
    except runs_db.UnknownRunError:
        raise UserError(f"no run with id {run_id!r} (see `python -m captionlab runs`)") from None
    except runs_db.AmbiguousRunError as exc:
        raise UserError(str(exc)) from None


def _raise_user_error(exc: Exception):
    from captionlab.cli import UserError

    raise UserError(str(exc)) from None


def _progress(row: dict) -> str:
    step, total = row.get("step"), row.get("total_steps")
    if step is None:
        return "-"
    return f"{step}/{total}" if total else str(step)


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
