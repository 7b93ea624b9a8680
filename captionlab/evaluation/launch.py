"""How an evaluation command is started: `python -m captionlab evaluate ...`, under `accelerate launch` for
several GPUs (each process then captions its share, see `sharding`). Imports nothing heavy (the app uses it)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence


def free_port() -> int:
    """A TCP port free on this machine now, for the launch's rendezvous (two launches must not share one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def evaluate_command(evaluate_args: Sequence[str], gpus: int = 1) -> list[str]:
    """The argv running `python -m captionlab <evaluate_args>` on `gpus` GPUs (one process each)."""
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    if gpus == 1:
        return [sys.executable, "-m", "captionlab", *evaluate_args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
            "--main_process_port", str(free_port()), "-m", "captionlab", *evaluate_args]
