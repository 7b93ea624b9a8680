"""The runs registry: one row per launched run in the shared SQLite database (table `runs`).

The run folder is the truth about training (status.json, metrics.jsonl); this table is the index
the launcher, the CLI and the app use to find runs and the processes or Slurm jobs behind them.
Every write is one transaction; rows come back as plain dicts.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from pathlib import Path

from captionlab import db

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    model        TEXT,
    strategy     TEXT,
    dataset      TEXT,
    recipe       TEXT,
    state        TEXT NOT NULL,
    pid          INTEGER,
    pgid         INTEGER,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    run_dir      TEXT NOT NULL,
    backend      TEXT NOT NULL DEFAULT 'local' CHECK (backend IN ('local', 'slurm')),
    slurm_job_id TEXT,
    message      TEXT,
    launch_spec  TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state);
"""
# launch_spec: JSON with what resuming needs to start the run the same way (gpus, trainer command, Slurm options).

COLUMNS = ("run_id", "name", "model", "strategy", "dataset", "recipe", "state", "pid", "pgid", "created_at",
           "updated_at", "run_dir", "backend", "slurm_job_id", "message", "launch_spec")
_UPDATABLE = frozenset(COLUMNS) - {"run_id", "created_at"}


class UnknownRunError(KeyError):
    """No run with that id in the registry."""

    def __str__(self) -> str:
        return f"no run with id {self.args[0]!r}"


class AmbiguousRunError(LookupError):
    """A run id prefix that several runs share; the message lists them."""


def _rebuilt_when_unreadable(function):
    """Run `function`; if the workspace's database turns out damaged mid-query, rebuild it and run it once more."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if kwargs.get("db_path") is not None or not db.is_unreadable(exc):
                raise
            db.rebuild_after(exc)
            return function(*args, **kwargs)
    return wrapper


@_rebuilt_when_unreadable
def register_run(run_id: str, *, name: str, run_dir: Path | str, state: str = "queued", model: str = "",
                 strategy: str = "", dataset: str = "", recipe: str = "", backend: str = "local",
                 pid: int | None = None, pgid: int | None = None, slurm_job_id: str | None = None,
                 message: str = "", launch_spec: dict | None = None, db_path: Path | None = None) -> dict:
    """Add a run; fails (sqlite3.IntegrityError) if the id exists."""
    now = time.time()
    row = {"run_id": run_id, "name": name, "model": model, "strategy": strategy, "dataset": dataset,
           "recipe": recipe, "state": state, "pid": pid, "pgid": pgid, "created_at": now, "updated_at": now,
           "run_dir": str(run_dir), "backend": backend, "slurm_job_id": slurm_job_id, "message": message,
           "launch_spec": json.dumps(launch_spec or {})}
    conn = db.connect(db_path, SCHEMA)
    try:
        with db.transaction(conn):
            conn.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         list(row.values()))
    finally:
        conn.close()
    return _decode(row)


@_rebuilt_when_unreadable
def update_run(run_id: str, db_path: Path | None = None, **fields) -> dict:
    """Set `fields` (column=value) on a run and stamp updated_at; returns the new row."""
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise ValueError(f"not updatable run fields: {', '.join(sorted(unknown))}")
    if "launch_spec" in fields and not isinstance(fields["launch_spec"], str):
        fields["launch_spec"] = json.dumps(fields["launch_spec"] or {})
    fields["updated_at"] = time.time()
    conn = db.connect(db_path, SCHEMA)
    try:
        with db.transaction(conn):
            assignments = ", ".join(f"{column} = ?" for column in fields)
            cursor = conn.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", [*fields.values(), run_id])
            if cursor.rowcount == 0:
                raise UnknownRunError(run_id)
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        conn.close()
    return _decode(dict(row))


@_rebuilt_when_unreadable
def get_run(run_id: str, db_path: Path | None = None) -> dict | None:
    conn = db.connect(db_path, SCHEMA)
    try:
        row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        conn.close()
    return _decode(dict(row)) if row else None


@_rebuilt_when_unreadable
def list_runs(db_path: Path | None = None) -> list[dict]:
    """Every run, newest first."""
    conn = db.connect(db_path, SCHEMA)
    try:
        rows = conn.execute("SELECT * FROM runs ORDER BY created_at DESC, run_id DESC").fetchall()
    finally:
        conn.close()
    return [_decode(dict(row)) for row in rows]


def find_run(run_id: str, db_path: Path | None = None) -> dict:
    """The run with this id, else the one run whose id starts with it (ids carry a timestamp, so a
    prefix saves typing); UnknownRunError if none, AmbiguousRunError if several."""
    exact = get_run(run_id, db_path)
    if exact:
        return exact
    matches = [row for row in list_runs(db_path) if row["run_id"].startswith(run_id)] if run_id else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UnknownRunError(run_id)
    raise AmbiguousRunError(f"{run_id!r} matches {len(matches)} runs: "
                            f"{', '.join(r['run_id'] for r in matches[:5])}{', ...' if len(matches) > 5 else ''}")


def find_run_dir(run_id: str, db_path: Path | None = None) -> Path | None:
    """The folder of the run `find_run` gives, or None if no run has this id or prefix (AmbiguousRunError if
    several do): for who takes a checkpoint as a run id or a folder."""
    try:
        return Path(find_run(run_id, db_path)["run_dir"]).expanduser()
    except UnknownRunError:
        return None


def _decode(row: dict) -> dict:
    spec = row.get("launch_spec")
    row["launch_spec"] = json.loads(spec) if isinstance(spec, str) and spec else (spec or {})
    return row
