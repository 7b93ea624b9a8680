"""`python -m train`: run a training recipe, run a model's whole study, or rebuild the embedded study.

    python -m train run --recipe embedded/lora [key=value ...]   # new run folder under the workspace
    python -m train run --run-dir DIR [--resume]                 # what the launcher starts
    accelerate launch --multi_gpu --num_processes 4 -m train run --recipe llava-1.5-7b/lora   # DDP
    accelerate launch --multi_gpu --num_processes 8 -m train run --recipe llava-1.5-7b/full   # FSDP2 (the recipe's distributed: fsdp)
    python -m train study --model llava-1.5-7b --datasets D.yaml [--gpus N | --slurm] [--dry-run]   # captionlab/study
    python -m train study status [--model NAME]

The run folder's layout is described in captionlab/training/run_folder.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def create_run(config) -> Path:
    """A new run folder under the workspace with the validated config in config.yaml (the launcher's own way)."""
    from captionlab.training.launcher import create_run_folder

    return create_run_folder(config.to_dict(), config.run_name, None).path


def _distributed_rank() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch` / torchrun, which set them in the environment; (0, 1) alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shared_run_folder(config, wait_s: float = 120.0) -> Path:
    """The run folder of this launch: created by rank 0; the other processes of a distributed launch (children
    of the same torchrun agent, so one parent pid and one MASTER_PORT) read its path from a note that rank 0
    leaves in <runs>/.starting/, since the process group the trainer sets up does not exist yet."""
    from captionlab import atomic

    rank, world = _distributed_rank()
    if world == 1:
        return create_run(config)
    note = _launch_note()
    if rank == 0:
        run_dir = create_run(config)
        note.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(note, str(run_dir))
        return run_dir
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if note.exists():
            return Path(note.read_text().strip())
        time.sleep(0.2)
    raise RuntimeError(f"rank {rank}: rank 0 did not create the run folder within {wait_s:.0f} s (no {note})")


def _launch_note() -> Path:
    """Where rank 0 of this distributed launch leaves its run folder's path for the other ranks."""
    from captionlab import paths

    return paths.runs_dir() / ".starting" / f"{os.getppid()}-{os.environ.get('MASTER_PORT', '0')}"


def register_started_run(run_dir: Path) -> None:
    """Put a run started from a terminal (`train run --recipe`) in the runs database as running, with this
    process's pid: its command line names the run folder (see `cmd_run`), which is how `runs` tells that it is
    alive. No process group is recorded: the group is the terminal's job (a script, a pipe, accelerate's
    launcher), so `runs stop` signals this process alone, and the trainer stops every rank with it."""
    from captionlab.training.config import load_run_config
    from captionlab.training.runs_db import register_run

    config = load_run_config(run_dir / "config.yaml")
    register_run(run_id=run_dir.name, name=config.run_name, model=config.model, strategy=config.strategy,
                 dataset=config.dataset, recipe=config.recipe or "", run_dir=str(run_dir), state="running",
                 pid=os.getpid(), message="started from a terminal (python -m train run)")


class _Tee:
    """A text stream that writes to the terminal and to the run's log.txt, so `runs show` and the app can show
    the log of a run started from a terminal too (the launcher redirects its trainers' output there itself)."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _tee_into(run_dir: Path) -> None:
    log = (run_dir / "log.txt").open("a", buffering=1)
    sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)


def cmd_run(args: argparse.Namespace) -> int:
    from captionlab.data.errors import DatasetError
    from captionlab.models.registry import ModelNotFoundError
    from captionlab.training.config import ConfigError, resolve_config
    from captionlab.training.preflight import preflight

    if args.run_dir is None and args.recipe is None:
        print("error: give --recipe (a new run) or --run-dir (an existing one)", file=sys.stderr)
        return 2
    if args.run_dir is None:
        try:
            config = resolve_config(args.recipe, args.overrides)
            if _distributed_rank()[0] == 0:  # (once: it may write the embedded world; the other ranks wait for rank 0)
                preflight(config)  # before any run folder exists: a wrong path or missing weights leave nothing behind
        except (ConfigError, DatasetError, ModelNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        run_dir = shared_run_folder(config)
        # Become `train run --run-dir DIR` (same pid, same environment): the command line then names the run
        # folder, which is how `runs` and the app tell a live trainer from a dead one (a pid alone may be reused).
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "train", "run", "--run-dir", str(run_dir), "--from-terminal"])
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").exists():
        print(f"error: {run_dir} has no config.yaml", file=sys.stderr)
        return 2
    from captionlab.training import run_lock

    try:  # one live trainer per run folder; the lock is held until this process ends (crash and kill included)
        lock = run_lock.hold_for_this_process(run_dir) if _distributed_rank()[0] == 0 else None  # noqa: F841
    except run_lock.RunBusyError as busy:
        print(f"error: {busy}", file=sys.stderr)
        return 2
    if args.from_terminal:
        _tee_into(run_dir)
        if _distributed_rank()[0] == 0:
            register_started_run(run_dir)
    from captionlab.training.trainer import train_run

    print(f"run folder: {run_dir}", flush=True)
    code = train_run(run_dir, resume=args.resume)
    rank, world = _distributed_rank()
    if args.from_terminal and world > 1 and rank == 0:
        _launch_note().unlink(missing_ok=True)  # every rank read it long ago, at start
    return code


def cmd_zoo(args: argparse.Namespace) -> int:
    from captionlab import paths
    from captionlab.zoo import build_zoo

    # Always the shipped folder: the personalisations load the base through the model registry, which reads
    # checkpoints/embedded, so a study built elsewhere would mix a new CLIP with the shipped base.
    return build_zoo(paths.CHECKPOINTS_DIR / "embedded", steps=args.only)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train one run")
    run.add_argument("--recipe", help="recipe path or name under train/recipes (e.g. embedded/lora)")
    run.add_argument("--run-dir", help="an existing run folder with config.yaml (the launcher uses this)")
    run.add_argument("--resume", action="store_true", help="continue from the run's last good checkpoint")
    run.add_argument("overrides", nargs="*", help="key=value settings that override the recipe")
    # set by `--recipe` when it hands over to `--run-dir`: register the run and copy the output into log.txt
    run.add_argument("--from-terminal", action="store_true", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)
    from captionlab.study.cli import register as register_study

    register_study(sub)
    zoo = sub.add_parser("zoo", help="rebuild the whole embedded study from nothing, into the shipped "
                                     "checkpoints/embedded (train study --model embedded runs its recipes into the "
                                     "workspace)")
    zoo.add_argument("--only", nargs="*", help="run only these steps (default: all)")
    zoo.set_defaults(func=cmd_zoo)
    args = parser.parse_args(argv)
    return args.func(args)


def _exit_distributed(code: int) -> None:
    """Under a distributed launcher, leave without interpreter finalization: gloo's C++ threads torn down
    there sometimes abort the process ("terminate called without an active exception", exit -6) after the
    run has finished and written everything, even after destroy_process_group (1 launch in ~10 on 2 CPU
    processes; pytorch/pytorch#179291 describes the finalization race). Nothing is left to write by then."""
    import os

    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    exit_code = main()
    _exit_distributed(exit_code)
    raise SystemExit(exit_code)
