"""A run is a folder: the trainer writes it, everything else (launcher, CLI, app) only reads it.

    <runs>/<run_id>/
      config.yaml        resolved config (recipe + overrides), written before training starts
      log.txt            the process's stdout/stderr (the launcher redirects it here)
      metrics.jsonl      one JSON object per optimizer step: step, epoch, loss, lr, grad_norm,
                         samples_per_s, elapsed_s, energy_j; and {"event": "val", epoch, val_loss, ...};
                         a resumed run first drops the rows after its checkpoint's step (it redoes them)
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
        """Every complete line of metrics.jsonl (a line cut short by a crash is skipped), one row per step
        and kind (training step or validation): where a step was written twice, the last row wins (runs
        resumed before `drop_metrics_after` existed repeat the steps redone after their checkpoint)."""
        return self.read_metrics_counted()[0]

    def read_metrics_counted(self) -> tuple[list[dict], int]:
        """(`read_metrics`' rows, how many non-empty lines were skipped as broken) so that readers can say so."""
        if not self.metrics_path.exists():
            return [], 0
        rows: dict = {}
        skipped = 0
        for index, line in enumerate(self.metrics_path.read_text(errors="replace").splitlines()):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += bool(line.strip())
                continue
            key = (row.get("event"), row["step"]) if isinstance(row, dict) and "step" in row else index
            rows.pop(key, None)  # the last row takes the last one's place, so steps stay in order
            rows[key] = row
        return list(rows.values()), skipped

    def append_metrics(self, row: dict) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()

    def drop_metrics_after(self, step: int) -> int:
        """Forget the rows of steps after `step`, and any line a crash cut short; returns how many lines went.

        A run resumed from its checkpoint at `step` trains the later steps again and writes their rows
        anew; without this, those steps would appear twice in the loss curves. The file is replaced
        atomically, so a crash here leaves it whole.
        """
        if not self.metrics_path.exists():
            return 0
        lines = self.metrics_path.read_text().splitlines()
        kept = [line for line in lines if _row_at_or_before(line, step)]
        if len(kept) < len(lines):
            atomic.write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))
        return len(lines) - len(kept)

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


def _row_at_or_before(line: str, step: int) -> bool:
    """Whether a metrics.jsonl line is a complete row of `step` or an earlier one (a row without a step stays)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    return not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)) or row["step"] <= step


def is_complete_checkpoint(folder: Path) -> bool:
    return (Path(folder) / CHECKPOINT_COMPLETE).exists()
