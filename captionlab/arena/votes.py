"""Arena votes in the results database: who voted, on which image, between which two captioners, shown in
which order, with what outcome, when.

    record_vote(Vote(voter="b-1f2e", image="gallery:coco-00", model="embedded", left="lora", right="full",
                     outcome="left", left_caption="...", right_caption="..."))
    list_votes()          # every vote, oldest first
    export_csv(stream)    # the same as CSV

One vote per voter, image and pair of captioners (of one model), whichever side each was shown on: a second
one raises `DuplicateVote` and changes nothing. `voter` is a per-browser id, or the `--auth` user's name.
Outcomes: `left`, `right` (that caption is better), `tie` (equally good), `both_bad`.
"""

from __future__ import annotations

import csv
import sqlite3
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from captionlab import db

OUTCOMES = ("left", "right", "tie", "both_bad")
SCHEMA = """
CREATE TABLE IF NOT EXISTS arena_votes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at    TEXT NOT NULL,
    voter         TEXT NOT NULL,
    image         TEXT NOT NULL,
    model         TEXT NOT NULL,
    left_key      TEXT NOT NULL,
    right_key     TEXT NOT NULL,
    pair          TEXT NOT NULL,
    outcome       TEXT NOT NULL CHECK (outcome IN ('left', 'right', 'tie', 'both_bad')),
    left_caption  TEXT NOT NULL DEFAULT '',
    right_caption TEXT NOT NULL DEFAULT '',
    UNIQUE (voter, image, model, pair)
);
"""


class VoteError(ValueError):
    """A vote that cannot be stored: the message says why."""


class DuplicateVote(VoteError):
    """This voter already voted on this image and pair."""


@dataclass(frozen=True)
class Vote:
    """One vote. `left` / `right`: the captioners (strategy keys) in the order they were shown."""

    voter: str
    image: str
    model: str
    left: str
    right: str
    outcome: str
    left_caption: str = ""
    right_caption: str = ""
    created_at: str | None = None
    id: int | None = None

    @property
    def pair(self) -> str:
        """The two captioners whatever the order they were shown in."""
        return "|".join(sorted((self.left, self.right)))

    def winner(self) -> str | None:
        """The captioner voted better, or None for a tie or both bad."""
        return {"left": self.left, "right": self.right}.get(self.outcome)


def _connect(db_path: str | Path | None) -> sqlite3.Connection:
    return db.connect(Path(db_path) if db_path is not None else None, schema=SCHEMA)


def _check(vote: Vote) -> None:
    if vote.outcome not in OUTCOMES:
        raise VoteError(f"unknown outcome {vote.outcome!r}; one of {', '.join(OUTCOMES)}")
    for name in ("voter", "image", "model", "left", "right"):
        if not str(getattr(vote, name) or "").strip():
            raise VoteError(f"a vote needs its {name}")
    if vote.left == vote.right:
        raise VoteError(f"a vote compares two different captioners, got {vote.left!r} twice")


def record_vote(vote: Vote, db_path: str | Path | None = None) -> int:
    """Store `vote` and return its id; DuplicateVote if this voter already judged this image and pair."""
    _check(vote)
    created_at = vote.created_at or datetime.now(timezone.utc).isoformat(timespec="microseconds")
    conn = _connect(db_path)
    try:
        with db.transaction(conn):
            try:
                cursor = conn.execute(
                    "INSERT INTO arena_votes (created_at, voter, image, model, left_key, right_key, pair, outcome, "
                    "left_caption, right_caption) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (created_at, vote.voter, vote.image, vote.model, vote.left, vote.right, vote.pair, vote.outcome,
                     vote.left_caption, vote.right_caption))
            except sqlite3.IntegrityError:
                raise DuplicateVote(f"you already voted on this pair of captioners for this image "
                                    f"({vote.pair.replace('|', ' vs ')}); your first vote stands") from None
            return int(cursor.lastrowid)
    finally:
        conn.close()


def has_voted(voter: str, image: str, model: str, left: str, right: str, db_path: str | Path | None = None) -> bool:
    """Whether `voter` already judged this image and pair (in either order)."""
    pair = "|".join(sorted((left, right)))
    conn = _connect(db_path)
    try:
        row = conn.execute("SELECT 1 FROM arena_votes WHERE voter = ? AND image = ? AND model = ? AND pair = ?",
                           (voter, image, model, pair)).fetchone()
    finally:
        conn.close()
    return row is not None


def list_votes(model: str | None = None, db_path: str | Path | None = None) -> list[Vote]:
    """Every vote (of one model, if given), oldest first."""
    sql = "SELECT * FROM arena_votes" + (" WHERE model = ?" if model is not None else "") + " ORDER BY id"
    conn = _connect(db_path)
    try:
        rows = conn.execute(sql, (model,) if model is not None else ()).fetchall()
    finally:
        conn.close()
    return [Vote(voter=r["voter"], image=r["image"], model=r["model"], left=r["left_key"], right=r["right_key"],
                 outcome=r["outcome"], left_caption=r["left_caption"], right_caption=r["right_caption"],
                 created_at=r["created_at"], id=r["id"]) for r in rows]


CSV_COLUMNS = [f.name for f in fields(Vote)]


def export_csv(stream: TextIO, votes: list[Vote] | None = None, db_path: str | Path | None = None) -> int:
    """Write every vote as CSV (a header, then one row per vote); returns how many."""
    votes = list_votes(db_path=db_path) if votes is None else votes
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for vote in votes:
        writer.writerow(asdict(vote))
    return len(votes)
