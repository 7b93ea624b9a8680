"""`python -m train`: run a training recipe, or rebuild the embedded study.

    python -m train run --recipe embedded/lora [key=value ...]   # new run folder under the workspace
    python -m train run --run-dir DIR [--resume]                 # what the launcher starts
    accelerate launch --multi_gpu --num_processes 4 -m train run --recipe llava-1.5-7b/lora   # DDP
    accelerate launch --multi_gpu --num_processes 8 -m train run --recipe llava-1.5-7b/full   # FSDP2 (the recipe's distributed: fsdp)

The run folder's layout is described in captionlab/training/run_folder.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def create_run(recipe: str, overrides: list[str]) -> Path:
    """Validate the config, create its run folder with config.yaml, and register it."""
    from captionlab import paths
    from captionlab.training.config import resolve_config, save_config

    config = resolve_config(recipe, overrides)
    run_dir = paths.runs_dir() / f"{config.run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while run_dir.exists():
        run_dir = run_dir.with_name(f"{run_dir.name}-{suffix}")
        suffix += 1
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "config.yaml")
    try:
        from captionlab.training.runs_db import register_run
    except ImportError:
        return run_dir
    register_run(run_id=run_dir.name, name=config.run_name, model=config.model, strategy=config.strategy,
                 dataset=config.dataset, recipe=config.recipe or "", run_dir=str(run_dir), state="queued")
    return run_dir


def cmd_run(args: argparse.Namespace) -> int:
    from captionlab.training.config import ConfigError
    from captionlab.training.trainer import train_run

    if args.run_dir is None and args.recipe is None:
        print("error: give --recipe (a new run) or --run-dir (an existing one)", file=sys.stderr)
        return 2
    try:
        run_dir = Path(args.run_dir) if args.run_dir else create_run(args.recipe, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (run_dir / "config.yaml").exists():
        print(f"error: {run_dir} has no config.yaml", file=sys.stderr)
        return 2
    print(f"run folder: {run_dir}", flush=True)
    return train_run(run_dir, resume=args.resume)


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
    run.set_defaults(func=cmd_run)
    zoo = sub.add_parser("zoo", help="rebuild the whole embedded study from nothing")
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
