"""The embedded SQLite database shared by the runs registry and the results store.

One file (`paths.database_path()`), WAL mode so the app can read while a trainer writes,
every write in a transaction. Each module that owns tables declares its schema as a string
and calls `connect(schema=...)`; `CREATE TABLE IF NOT EXISTS` makes that idempotent.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from captionlab import paths


def connect(db_path: Path | None = None, schema: str = "") -> sqlite3.Connection:
    """Open the database (creating it and `schema` if needed). Rows come back as sqlite3.Row.

    The workspace's database, found unreadable (not a database, a damaged page), is rebuilt from the run folders
    and results files it indexes (training/registry_rebuild.py), with a note on stderr and in `rebuild_notes`."""
    if db_path is None:
        try:
            return _open(paths.database_path(), schema)
        except sqlite3.DatabaseError as exc:
            if not is_unreadable(exc):
                raise
            rebuild_after(exc)
            return _open(paths.database_path(), schema)
    return _open(Path(db_path), schema)


rebuild_notes: list[str] = []  # what automatic rebuilds did, newest last, for the CLI and the app to show


def is_unreadable(exc: BaseException) -> bool:
    """A damaged or foreign file (not a locked, full or failing disk, nor a constraint): rebuilding can help."""
    return type(exc) is sqlite3.DatabaseError


def rebuild_after(exc: BaseException) -> str:
    """Rebuild the workspace's database after `exc` said it cannot be read; returns (and keeps) the note."""
    import sys

    from captionlab.training.registry_rebuild import rebuild_registry

    note = rebuild_registry(str(exc))
    rebuild_notes.append(note)
    print(f"note: {note}", file=sys.stderr, flush=True)
    return note


def _open(db_path: Path, schema: str) -> sqlite3.Connection:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)  # autocommit; use `with transaction`
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    if schema:
        conn.executescript(schema)
    return conn


class transaction:
    """`with transaction(conn): ...` runs the block in BEGIN IMMEDIATE / COMMIT (ROLLBACK on error, also when
    the COMMIT itself fails): a failed transaction leaves nothing behind."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        # After SQLITE_FULL or an I/O error SQLite has already rolled back; a second ROLLBACK would
        # raise "no transaction is active" and hide the real error (e.g. "database or disk is full").
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
