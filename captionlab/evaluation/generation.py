"""Captions for a dataset split: batched, bucketed by image shape, and resumable.

    predictions = generate_predictions(captioner, records, out / "predictions.jsonl", batch_size=16)

- Batches are bucketed: records are ordered by image aspect ratio, then size (read from the
  file headers only), so the images of a batch share a shape and LLaVA-NeXT's batches share a
  tile count instead of padding every image to the largest one. The result is keyed by image
  id, so the order of generation never shows.
- Every finished batch is appended to `out_jsonl` as one JSON line per image,
  `{"image_id", "caption", "seconds", "joules", "cut", "references"}` (`seconds` / `joules`: the
  batch's time and energy shared out equally over its images; `cut`: true where the caption
  reached the token limit unfinished, from a captioner that tells (`last_cut`), absent where it
  does not; `references` for the app's drill-down), flushed and fsynced. Run again after an interruption and the images whose line
  is complete are read back, not recomputed; a torn last line (a crash mid-write) is cut off and
  its image captioned again. Lines are UTF-8 JSON with every line-breaking character escaped,
  so a caption can hold anything (emoji, U+2028, newlines) and still be one line.
- `meta` (what produced the captions: model, strategy, checkpoint, prompt, ...) is kept in
  `<out_jsonl>.meta.json`; when it differs from the meta of an existing file, that file is
  moved aside to `<out_jsonl>.stale` and everything is captioned again rather than mixing the
  captions of two settings.
- A missing or undecodable image is a `GenerationError` naming the file, unless
  `skip_broken=True`: then it is left out and counted (`Predictions.skipped`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captionlab.data.records import CaptionRecord

# Characters str.splitlines() breaks on that json.dumps(ensure_ascii=False) leaves raw.
_RAW_LINE_BREAKS = ("\x85", "\u2028", "\u2029")
META_SUFFIX = ".meta.json"
STALE_SUFFIX = ".stale"


class GenerationError(Exception):
    """Captions cannot be generated as asked (a broken image, a captioner that misbehaves)."""


@dataclass
class SkippedImage:
    image_id: str
    path: str
    reason: str


class Predictions(dict):
    """image id -> caption, plus what happened: how many were resumed, generated or skipped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resumed: int = 0  # read back from an earlier, interrupted run
        self.generated: int = 0  # captioned by this call
        self.skipped: list[SkippedImage] = []
        self.seconds: float = 0.0  # captioning time of every prediction, this run and earlier ones
        self.joules: float | None = None  # energy of every prediction, when every line has it
        self.stale_file: Path | None = None  # an existing file made with other settings, moved aside
        self.torn_lines: int = 0  # unreadable lines ignored (a torn last line is one)
        self.cut: int | None = None  # captions cut at the token limit, when the captioner told for every one


@dataclass
class _Line:
    image_id: str
    caption: str
    seconds: float | None
    joules: float | None
    cut: bool | None = None


def dumps_line(row: dict[str, Any]) -> str:
    """One JSON line, UTF-8 kept readable, with no character any reader would split a line on."""
    text = json.dumps(row, ensure_ascii=False, allow_nan=False)
    for char in _RAW_LINE_BREAKS:
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def read_predictions(path: Path) -> tuple[dict[str, _Line], int, int]:
    """(complete lines by image id, bytes of the file that are complete lines, unreadable lines).

    A line counts only when it ends with a newline and parses to an object with a string
    `image_id` and a string `caption`; a later line for the same image wins.
    """
    path = Path(path)
    if not path.exists():
        return {}, 0, 0
    data = path.read_bytes()
    complete_end = data.rfind(b"\n") + 1  # everything after the last newline is a torn line
    lines: dict[str, _Line] = {}
    bad = 0 if complete_end == len(data) else 1
    for raw in data[:complete_end].split(b"\n"):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad += 1
            continue
        if not (isinstance(row, dict) and isinstance(row.get("image_id"), str)
                and isinstance(row.get("caption"), str)):
            bad += 1
            continue
        cut = row.get("cut")
        lines[row["image_id"]] = _Line(row["image_id"], row["caption"], _number(row.get("seconds")),
                                       _number(row.get("joules")), cut if isinstance(cut, bool) else None)
    return lines, complete_end, bad


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def image_shape(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, or GenerationError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise GenerationError(f"image file not found: {path}") from None
    except UnidentifiedImageError:
        raise GenerationError(f"not a readable image: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise GenerationError(f"cannot read image {path}: {exc}") from None


def load_image(path: Path):
    """The decoded RGB image, or GenerationError naming the file (missing, truncated, not an image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise GenerationError(f"image file not found: {path}") from None
    except UnidentifiedImageError:
        raise GenerationError(f"not a readable image: {path}") from None
    except Image.DecompressionBombError:
        raise GenerationError(f"image too large to decode safely: {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise GenerationError(f"broken image {path}: {exc}") from None


def bucket_order(records: Sequence[CaptionRecord], shapes: dict[str, tuple[int, int]]) -> list[CaptionRecord]:
    """Records ordered by aspect ratio, then area, then id: neighbours share a shape (and tiles)."""
    def key(record: CaptionRecord):
        width, height = shapes[record.image_id]
        return (round(width / max(height, 1), 3), width * height, record.image_id)

    return sorted(records, key=key)


def prepare_file(out_jsonl: Path, meta: dict | None, predictions: Predictions) -> None:
    """Apply the meta check (moving a file of other settings aside) and write the meta file."""
    if meta is None:
        return
    meta_path = out_jsonl.with_name(out_jsonl.name + META_SUFFIX)
    wanted = json.loads(json.dumps(meta, default=str))
    existing = None
    if meta_path.exists():
        try:
            existing = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            existing = None
    if out_jsonl.exists() and existing != wanted:
        stale = out_jsonl.with_name(out_jsonl.name + STALE_SUFFIX)
        os.replace(out_jsonl, stale)
        predictions.stale_file = stale
    if existing != wanted:
        from captionlab import atomic

        atomic.write_json(meta_path, wanted)


def _caption_batches(captioner, ordered, batch_size, out_jsonl, skip_broken, predictions, generated, energy_meter,
                     last_joules, progress, done_before, total) -> None:
    """Caption `ordered` in batches, appending each finished batch to `out_jsonl` (fsynced) and to `generated`."""
    with out_jsonl.open("a", encoding="utf-8", newline="\n") as handle:
        for start in range(0, len(ordered), batch_size):
            batch, images = [], []
            for record in ordered[start:start + batch_size]:
                try:
                    images.append(load_image(record.image_path))
                    batch.append(record)
                except GenerationError as exc:
                    if not skip_broken:
                        raise
                    predictions.skipped.append(SkippedImage(record.image_id, str(record.image_path), str(exc)))
            if not batch:
                continue
            started = time.perf_counter()
            captions = list(captioner.caption(images))
            seconds = (time.perf_counter() - started) / len(batch)
            cut = getattr(captioner, "last_cut", None)
            cut = list(cut) if cut is not None and len(cut) == len(captions) else [None] * len(captions)
            if len(captions) != len(batch):
                raise GenerationError(f"captioner {getattr(captioner, 'key', captioner)!r} returned "
                                      f"{len(captions)} captions for {len(batch)} images")
            joules = None
            if energy_meter is not None:
                now = energy_meter.joules()
                joules, last_joules = (now - last_joules) / len(batch), now
            lines = []
            for record, caption, was_cut in zip(batch, captions, cut):
                caption = "" if caption is None else str(caption)
                was_cut = None if was_cut is None else bool(was_cut)
                generated[record.image_id] = _Line(record.image_id, caption, seconds, joules, was_cut)
                row = {"image_id": record.image_id, "caption": caption, "seconds": seconds}
                if joules is not None:
                    row["joules"] = joules
                if was_cut is not None:
                    row["cut"] = was_cut
                row["references"] = list(record.references)
                lines.append(dumps_line(row) + "\n")
            handle.write("".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
            if progress is not None:
                progress(done_before + len(generated), total)


def generate_predictions(
    captioner,
    records: Sequence[CaptionRecord],
    out_jsonl: Path,
    batch_size: int,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    skip_broken: bool = False,
    meta: dict | None = None,
    energy_meter=None,
) -> Predictions:
    """Caption `records` (the first `limit` of them) with `captioner`, resuming from `out_jsonl`.

    Returns image id -> caption for every record (minus skipped broken images), in the order of
    `records`. `progress(done, total)` is called after reading back and after every batch.
    `energy_meter` (a started EnergyMeter) adds each batch's joules to its lines. A captioner
    with a `prepare()` method (a lazily loaded one) gets it called once before the first batch,
    so loading the model is not counted as captioning time or energy.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out_jsonl = Path(out_jsonl)
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    selected: list[CaptionRecord] = []
    seen: set[str] = set()
    for record in records:  # the first record of an id wins; ids key the output
        if record.image_id not in seen:
            seen.add(record.image_id)
            selected.append(record)
    if limit is not None:
        selected = selected[:max(0, int(limit))]

    predictions = Predictions()
    prepare_file(out_jsonl, meta, predictions)
    existing, complete_end, predictions.torn_lines = read_predictions(out_jsonl)
    if out_jsonl.exists() and complete_end < out_jsonl.stat().st_size:
        with out_jsonl.open("r+b") as handle:  # cut the torn last line off before appending
            handle.truncate(complete_end)

    done = {r.image_id: existing[r.image_id] for r in selected if r.image_id in existing}
    todo = [r for r in selected if r.image_id not in done]
    total = len(selected)
    if progress is not None:
        progress(len(done), total)

    shapes: dict[str, tuple[int, int]] = {}
    for record in list(todo):
        try:
            shapes[record.image_id] = image_shape(record.image_path)
        except GenerationError as exc:
            if not skip_broken:
                raise
            predictions.skipped.append(SkippedImage(record.image_id, str(record.image_path), str(exc)))
            todo.remove(record)
    ordered = bucket_order(todo, shapes)

    generated: dict[str, _Line] = {}
    if ordered:
        prepare = getattr(captioner, "prepare", None)
        if callable(prepare):  # load a lazily loaded model now, outside the timed batches
            prepare()
        last_joules = energy_meter.joules() if energy_meter is not None else None
        try:
            _caption_batches(captioner, ordered, batch_size, out_jsonl, skip_broken, predictions, generated,
                             energy_meter, last_joules, progress, len(done), total)
        finally:
            release = getattr(captioner, "release", None)
            if callable(release):  # the decoding buffers of the last batch shape (a 7B model's KV cache)
                release()

    every = {**done, **generated}
    for record in selected:
        if record.image_id in every:
            predictions[record.image_id] = every[record.image_id].caption
    lines = [every[k] for k in predictions]
    predictions.resumed = len(done)
    predictions.generated = len(generated)
    add_totals(predictions, lines)
    return predictions


def add_totals(predictions, lines) -> None:
    """`predictions`' seconds, and its joules and cut captions where every line recorded them, summed over `lines`
    (the written lines of its captions, read back or made now)."""
    predictions.seconds = sum(line.seconds or 0.0 for line in lines)
    if lines and all(line.joules is not None for line in lines):
        predictions.joules = sum(line.joules for line in lines)
    if lines and all(line.cut is not None for line in lines):
        predictions.cut = sum(line.cut for line in lines)
