"""Rebuild the runs registry from the run folders, which hold the truth about every run.

    python -m captionlab runs rebuild      # by hand
    rebuild_registry("file is not a database")   # what runs_db does when it cannot read the database

Each folder under `<workspace>/runs/` with a config.yaml becomes a row again: name, model, strategy and dataset
from config.yaml, state and message from status.json, how to start it again from launch.json (written at launch;
a run from before that, or from a terminal, resumes as `python -m train run`), and the pid of a live trainer from
the run's lock (run_lock.py). A run the folders call queued or running without a live trainer comes back as
crashed, and can be resumed.

An unreadable database file is moved aside (kept as `<name>.unreadable-<time>`, for who wants to look), not
deleted. It also held the results table: the evaluations' results.json files under the workspace are recorded
again, so the Benchmarks tab loses none of them.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

import yaml

from captionlab import atomic, db, paths
from captionlab.training import run_lock, runs_db
from captionlab.training.run_folder import RunFolder

ACTIVE = ("queued", "running")


def rebuild_registry(reason: str | None = None) -> str:
    """Rebuild the `runs` table (moving an unreadable database aside first); returns a note saying what was done."""
    db_path = paths.database_path()
    moved = _move_aside(db_path) if reason is not None else None
    conn = db.connect(db_path, runs_db.SCHEMA)
    try:
        with db.transaction(conn):
            conn.execute("DELETE FROM runs")
            count = sum(_insert(conn, folder) for folder in sorted(paths.runs_dir().iterdir()) if folder.is_dir())
    finally:
        conn.close()
    results = _record_results_again() if moved is not None else 0
    note = f"rebuilt the runs registry from {count} run folder{'s' * (count != 1)} in {paths.runs_dir()}"
    if reason is not None:
        note = f"the runs registry could not be read ({reason}); {note}"
    if moved is not None:
        note += f"; the unreadable file is kept as {moved.name}, and {results} evaluation result(s) were recorded " \
                "again from their results.json"
    return note


def _insert(conn: sqlite3.Connection, path: Path) -> bool:
    folder = RunFolder(path)
    if not folder.config_path.is_file():
        return False
    try:
        config = yaml.safe_load(folder.config_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    launch = atomic.read_json_object(path / "launch.json")
    status = folder.read_status()
    state, message = status.get("state") or "crashed", status.get("message") or ""
    pid = run_lock.holder_pid(path)
    if pid:
        state = "running"
    elif state in ACTIVE:
        state, message = "crashed", "no live trainer when the registry was rebuilt; resumable from its checkpoint"
    created = folder.config_path.stat().st_mtime
    spec = {key: value for key, value in launch.items() if key not in ("name", "recipe", "backend")}
    name = launch.get("name") or config.get("name") or f"{config.get('model')}-{config.get('strategy')}"
    row = {"run_id": path.name, "name": str(name),
           "model": str(config.get("model") or ""), "strategy": str(config.get("strategy") or ""),
           "dataset": str(config.get("dataset") or ""),
           "recipe": str(launch.get("recipe") or config.get("recipe") or ""),
           "state": state, "pid": pid if pid and pid > 0 else None, "pgid": None, "created_at": created,
           "updated_at": time.time(), "run_dir": str(path), "backend": launch.get("backend") or "local",
           "slurm_job_id": None, "message": message, "launch_spec": json.dumps(spec or {"gpus": 1})}
    conn.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    return True


def _move_aside(db_path: Path) -> Path | None:
    if not db_path.exists():
        return None
    target = db_path.with_name(f"{db_path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    db_path.replace(target)
    for suffix in ("-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return target


def _record_results_again() -> int:
    from captionlab.evaluation import results

    count = 0
    for path in sorted(paths.workspace().rglob(results.RESULTS_JSON_NAME)):
        if paths.runs_dir() in path.parents:
            continue
        try:
            row = results.load_results_json(path).result
            results.record_result(model=row.model, strategy=row.strategy, dataset=row.dataset, split=row.split,
                                  metrics=row.metrics, n_images=row.n_images, unavailable=row.unavailable,
                                  checkpoint=row.checkpoint, seconds=row.seconds, energy_j=row.energy_j,
                                  energy_method=row.energy_method, clip_encoder=row.clip_encoder,
                                  predictions_path=row.predictions_path, extra=row.extra)
            count += 1
        except (OSError, ValueError, TypeError, KeyError) as exc:
            print(f"note: {path} not recorded again: {exc}", file=sys.stderr)
    return count
