"""A run is a folder: the trainer writes it, everything else (launcher, CLI, app) only reads it.

    <runs>/<run_id>/
      config.yaml        resolved config (recipe + overrides), written before training starts
      log.txt            the process's stdout/stderr (the launcher redirects it here)
      metrics.jsonl      one JSON object per optimizer step: step, epoch, loss, lr, grad_norm,
                         samples_per_s, elapsed_s, energy_j; and {"event": "val", epoch, val_loss, ...}
      status.json        {"state": queued|running|finished|failed|stopped|crashed, "pid", "step",
                         "total_steps", "epoch", "best_epoch", "best_val_loss", "message", "updated"}
      energy.json        energy summary: whole run and up to the best checkpoint, with method and device
      last/  best/       checkpoints (strategy artifact + trainer_state), each swapped in atomically
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from captionlab import atomic

STATES = ("queued", "running", "finished", "failed", "stopped", "crashed")
CHECKPOINT_COMPLETE = "COMPLETE"  # marker written last inside a checkpoint folder


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    config_path = property(lambda self: self.path / "config.yaml")
    log_path = property(lambda self: self.path / "log.txt")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    status_path = property(lambda self: self.path / "status.json")
    energy_path = property(lambda self: self.path / "energy.json")
    last_dir = property(lambda self: self.path / "last")
    best_dir = property(lambda self: self.path / "best")

    def read_status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"state": "queued"}

    def write_status(self, **fields) -> dict:
        status = {**self.read_status(), **fields, "updated": time.time()}
        atomic.write_json(self.status_path, status)
        return status

    def read_metrics(self) -> list[dict]:
        """Every complete line of metrics.jsonl (a line cut short by a crash is skipped)."""
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def append_metrics(self, row: dict) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()

    def read_config(self) -> dict:
        import yaml

        return yaml.safe_load(self.config_path.read_text()) if self.config_path.exists() else {}

    def read_energy(self) -> dict:
        try:
            return json.loads(self.energy_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def is_complete_checkpoint(folder: Path) -> bool:
    return (Path(folder) / CHECKPOINT_COMPLETE).exists()
