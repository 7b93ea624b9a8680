"""The results store: every evaluation is a row in the SQLite database, plus a results.json.

Rows live in the `results` table of the shared database (`captionlab.db`, WAL mode, every write
in a transaction). A row says what was evaluated (model, strategy, checkpoint, dataset, split),
the scores, which metrics have no number and why (`unavailable`), how many images, how long it
took, the energy it used and how that was obtained, which CLIP produced CLIP-Score, and where the
predictions are.

Scale: `metrics` are stored on the paper's scale: BLEU-4, METEOR, ROUGE-L, CIDEr and SPICE x100
(CIDEr 105.7), CLIP-Score and RefCLIP-Score unscaled as the paper prints them (0.806), so rows
compare directly with `reference_data.paper_results()`. `collect_metrics` builds that dict from
`metrics.MetricReport` and `clipscore.ClipScoreReport`.

`write_results_json` writes the same record (plus optional per-image scores) next to the
predictions, atomically (temp file in the same folder, fsync, os.replace). This module imports
neither torch nor pycocoevalcap.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from captionlab import db
from captionlab.names import REFERENCE_METRICS

KNOWN_METRICS = REFERENCE_METRICS + ("CLIP-Score", "RefCLIP-Score", "CHAIR-i", "CHAIR-s", "Object-Recall")
METRICS_SCALE = ("paper: BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE x100; "
                 "CLIP-Score and RefCLIP-Score unscaled (w=2.5 * max(cos, 0)); "
                 "CHAIR-i, CHAIR-s, Object-Recall in percent")
RESULTS_JSON_FORMAT = "captionlab.results/1"
RESULTS_JSON_NAME = "results.json"

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at       TEXT NOT NULL,
    model            TEXT NOT NULL,
    strategy         TEXT NOT NULL,
    checkpoint       TEXT,
    dataset          TEXT NOT NULL,
    split            TEXT NOT NULL,
    metrics          TEXT NOT NULL,
    unavailable      TEXT NOT NULL DEFAULT '{}',
    n_images         INTEGER NOT NULL,
    seconds          REAL,
    energy_j         REAL,
    energy_method    TEXT,
    clip_encoder     TEXT,
    predictions_path TEXT,
    extra            TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS results_by_setting ON results (model, strategy, dataset, split, created_at);
"""


@dataclass
class ResultRow:
    """One evaluation (see the module docstring for the metrics' scale)."""

    model: str
    strategy: str
    dataset: str
    split: str
    metrics: dict[str, float]
    n_images: int
    unavailable: dict[str, str] = field(default_factory=dict)
    checkpoint: str | None = None
    seconds: float | None = None
    energy_j: float | None = None
    energy_method: str | None = None
    clip_encoder: str | None = None
    predictions_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. caption lengths, excluded images
    id: int | None = None
    created_at: str | None = None

    @classmethod
    def from_db(cls, row: sqlite3.Row) -> "ResultRow":
        data = dict(row)
        for key in ("metrics", "unavailable", "extra"):
            data[key] = json.loads(data[key] or "{}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def _connect(db_path: str | Path | None) -> sqlite3.Connection:
    return db.connect(Path(db_path) if db_path is not None else None, schema=SCHEMA)


def collect_metrics(*reports) -> tuple[dict[str, float], dict[str, str]]:
    """Merge reports (MetricReport, ClipScoreReport, ...) into (metrics on the paper's scale,
    unavailable reasons). Each report needs `paper_scale_metrics()` and `unavailable`."""
    metrics: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for report in reports:
        if report is None:
            continue
        metrics.update(report.paper_scale_metrics())
        unavailable.update(getattr(report, "unavailable", {}) or {})
    for name in metrics:
        unavailable.pop(name, None)
    return metrics, unavailable


def _validate(metrics: dict, unavailable: dict) -> None:
    unknown = [m for m in list(metrics) + list(unavailable) if m not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown metric name(s) {unknown}; known: {list(KNOWN_METRICS)}")
    both = set(metrics) & set(unavailable)
    if both:
        raise ValueError(f"metric(s) {sorted(both)} given both a value and an unavailability reason")
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metric {name} = {value!r} is not a finite number; report it as unavailable instead")
    for name, reason in unavailable.items():
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"unavailable metric {name} needs a reason")


def record_result(
    *,
    model: str,
    strategy: str,
    dataset: str,
    split: str,
    metrics: dict[str, float],
    n_images: int,
    unavailable: dict[str, str] | None = None,
    checkpoint: str | Path | None = None,
    seconds: float | None = None,
    energy_j: float | None = None,
    energy_method: str | None = None,
    clip_encoder: str | None = None,
    predictions_path: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    db_path: str | Path | None = None,
) -> int:
    """Store one evaluation (metrics on the paper's scale) and return its row id."""
    unavailable = dict(unavailable or {})
    _validate(metrics, unavailable)
    metrics = {name: float(value) for name, value in metrics.items()}
    if energy_j is not None and not energy_method:
        raise ValueError("energy_j needs energy_method (how the energy was obtained)")
    created_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    conn = _connect(db_path)
    try:
        with db.transaction(conn):
            cursor = conn.execute(
                "INSERT INTO results (created_at, model, strategy, checkpoint, dataset, split, metrics, "
                "unavailable, n_images, seconds, energy_j, energy_method, clip_encoder, predictions_path, extra) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (created_at, model, strategy, None if checkpoint is None else str(checkpoint), dataset, split,
                 json.dumps(metrics), json.dumps(unavailable), int(n_images), seconds, energy_j, energy_method,
                 clip_encoder, None if predictions_path is None else str(predictions_path),
                 json.dumps(extra or {}, default=str)),
            )
            return int(cursor.lastrowid)
    finally:
        conn.close()


def get_result(result_id: int, db_path: str | Path | None = None) -> ResultRow:
    """The row with this id (KeyError if there is none)."""
    conn = _connect(db_path)
    try:
        row = conn.execute("SELECT * FROM results WHERE id = ?", (result_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise KeyError(f"no result with id {result_id}")
    return ResultRow.from_db(row)


def list_results(
    *,
    model: str | None = None,
    strategy: str | None = None,
    dataset: str | None = None,
    split: str | None = None,
    checkpoint: str | None = None,
    clip_encoder: str | None = None,
    limit: int | None = None,
    db_path: str | Path | None = None,
) -> list[ResultRow]:
    """Rows matching every filter given, newest first."""
    filters = {"model": model, "strategy": strategy, "dataset": dataset, "split": split,
               "checkpoint": checkpoint, "clip_encoder": clip_encoder}
    clauses = [(f"{column} = ?", value) for column, value in filters.items() if value is not None]
    sql = "SELECT * FROM results"
    if clauses:
        sql += " WHERE " + " AND ".join(clause for clause, _ in clauses)
    sql += " ORDER BY created_at DESC, id DESC"
    params = [value for _, value in clauses]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    conn = _connect(db_path)
    try:
        return [ResultRow.from_db(row) for row in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def latest_results(
    model: str | None = None,
    *,
    split: str | None = None,
    db_path: str | Path | None = None,
) -> list[ResultRow]:
    """The newest row for each (model, strategy, dataset, split), optionally for one model or
    split, ordered by model, strategy, dataset, split."""
    sql = """
        SELECT * FROM results AS r WHERE r.id = (
            SELECT r2.id FROM results AS r2
            WHERE r2.model = r.model AND r2.strategy = r.strategy AND r2.dataset = r.dataset AND r2.split = r.split
            ORDER BY r2.created_at DESC, r2.id DESC LIMIT 1)
    """
    params: list = []
    if model is not None:
        sql += " AND r.model = ?"
        params.append(model)
    if split is not None:
        sql += " AND r.split = ?"
        params.append(split)
    sql += " ORDER BY r.model, r.strategy, r.dataset, r.split"
    conn = _connect(db_path)
    try:
        return [ResultRow.from_db(row) for row in conn.execute(sql, params).fetchall()]
    finally:
        conn.close()


def results_json_path(predictions_path: str | Path) -> Path:
    """The results.json that belongs next to a predictions file (or inside a predictions folder)."""
    predictions_path = Path(predictions_path)
    folder = predictions_path if predictions_path.is_dir() else predictions_path.parent
    return folder / RESULTS_JSON_NAME


def write_results_json(path: str | Path, result: ResultRow, *, per_image: dict | None = None,
                       hallucinated: dict[str, list[str]] | None = None) -> Path:
    """Atomically write `result` (and optional per-image scores: metric -> {image id -> score}, and CHAIR's
    hallucinated words: image id -> words) to `path` (a folder means `<folder>/results.json`). Returns the file."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": RESULTS_JSON_FORMAT,
        "metrics_scale": METRICS_SCALE,
        "result": result.to_dict(),
        "per_image": {metric: {str(k): v for k, v in scores.items()} for metric, scores in (per_image or {}).items()},
    }
    if hallucinated is not None:
        document["hallucinated_words"] = {str(k): list(v) for k, v in hallucinated.items()}
    text = json.dumps(document, indent=2, ensure_ascii=False, default=str, allow_nan=False)
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


@dataclass
class ResultsFile:
    """What `load_results_json` returns."""

    result: ResultRow
    per_image: dict[str, dict[str, float]]
    metrics_scale: str
    hallucinated: dict[str, list[str]] | None = None  # CHAIR's words per image; None: CHAIR not computed


def load_results_json(path: str | Path) -> ResultsFile:
    """Read a file written by `write_results_json` (a folder means `<folder>/results.json`)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON_NAME
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("format") != RESULTS_JSON_FORMAT:
        raise ValueError(f"{path} is not a captionlab results file (format {document.get('format')!r})")
    known = {f.name for f in fields(ResultRow)}
    result = ResultRow(**{k: v for k, v in document["result"].items() if k in known})
    return ResultsFile(result=result, per_image=document.get("per_image", {}), metrics_scale=document["metrics_scale"],
                       hallucinated=document.get("hallucinated_words"))
