"""Bad input, handled once for every reader.

`DatasetError` is the one exception the readers and `captionlab.data.datasets` raise; its
message always names the file (and, where it applies, the record) at fault, so callers can
show it as is. `ReadReport` makes visible what a reader left out on purpose (missing images
with `skip_missing=True`, VizWiz's rejected and pre-canned captions, images with no caption
left, annotation rows not read as captions: a TSV's header line, img2dataset's failed
downloads). The helpers below are the checks that raise or fill them, so that no reader ever
fails with a bare KeyError or TypeError deep inside.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from captionlab.data.records import CaptionRecord

log = logging.getLogger("captionlab.data")

MISSING_EXAMPLES_SHOWN = 3
SKIP_MISSING_HINT = "pass skip_missing=True (--skip-missing on the command line) to leave them out"


class DatasetError(Exception):
    """A dataset that cannot be read as asked; the message says which file and why."""


@dataclass
class ReadReport:
    """What a read left out, and why. Pass one to a reader to receive its counts."""

    source: str = ""
    records: int = 0
    missing_images: int = 0
    missing_examples: list[str] = field(default_factory=list)
    dropped_captions: int = 0
    dropped_caption_reason: str = ""
    images_without_captions: int = 0
    dropped_rows: dict[str, int] = field(default_factory=dict)  # why -> how many annotation rows were not read

    def notes(self) -> list[str]:
        """One human-readable line per thing left out (empty when nothing was)."""
        lines = []
        if self.missing_images:
            lines.append(f"skipped {self.missing_images} record(s) whose image file is missing")
        if self.dropped_captions:
            lines.append(f"dropped {self.dropped_captions} caption(s) ({self.dropped_caption_reason})")
        if self.images_without_captions:
            lines.append(f"dropped {self.images_without_captions} image(s) left with no caption")
        for reason, count in self.dropped_rows.items():
            lines.append(f"dropped {count} row(s): {reason}")
        return lines


def require_file(path: Path, what: str) -> Path:
    """`path` if it is an existing file, else a DatasetError naming it."""
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_file():
        raise DatasetError(f"{what} is not a file: {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """`path` if it is an existing folder, else a DatasetError naming it."""
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_dir():
        raise DatasetError(f"{what} is not a folder: {path}")
    return path


def check_inputs(annotations: Path | str, images: Path | str, what: str) -> tuple[Path, Path]:
    """The annotation file and the image folder as absolute paths, both checked to exist."""
    annotations_path = Path(annotations).expanduser().resolve()
    images_path = Path(images).expanduser().resolve()
    require_file(annotations_path, what)
    require_dir(images_path, "image folder")
    return annotations_path, images_path


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of an existing file (a leading byte-order mark, as spreadsheet exports write, dropped), with
    undecodable bytes reported by position."""
    require_file(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc


def load_json_object(path: Path, what: str) -> dict[str, Any]:
    """Parse a JSON file whose top level must be an object; errors give line and column."""
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"malformed JSON in {path} at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, found {type_name(data)}")
    return data


JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
                   int: "a number", float: "a number", type(None): "null"}


def type_name(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def as_object(entry: Any, path: Path, where: str) -> dict[str, Any]:
    """`entry` if it is a JSON object, else a DatasetError naming the record."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: {where} should be an object, found {type_name(entry)}")
    return entry


def get_field(entry: dict[str, Any], key: str, expected: type | tuple[type, ...],
              path: Path, where: str) -> Any:
    """entry[key], checked to exist and to have the expected type."""
    if key not in entry:
        raise DatasetError(f"{path}: {where} has no '{key}' field")
    value = entry[key]
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        wanted = " or ".join(dict.fromkeys(JSON_TYPE_NAMES.get(t, t.__name__) for t in allowed))
        raise DatasetError(f"{path}: {where}: '{key}' should be {wanted}, found {type_name(value)}")
    return value


def optional_field(entry: dict[str, Any], key: str, expected: type | tuple[type, ...],
                   path: Path, where: str, default: Any = None) -> Any:
    """entry[key] checked like `get_field` when present and not null, else `default`."""
    if entry.get(key) is None:
        return default
    return get_field(entry, key, expected, path, where)


def get_list(data: dict[str, Any], key: str, path: Path, where: str = "the top level") -> list[Any]:
    """data[key], checked to be a JSON list."""
    return get_field(data, key, list, path, where)


def get_string_list(entry: dict[str, Any], key: str, path: Path, where: str) -> list[str]:
    """entry[key], checked to be a list of strings."""
    strings = get_list(entry, key, path, where)
    for position, text in enumerate(strings):
        if not isinstance(text, str):
            raise DatasetError(f"{path}: {where}: '{key}'[{position}] should be a string, found {type_name(text)}")
    return strings


def record_id(entry: dict[str, Any], path: Path, where: str, key: str = "id") -> str:
    """A record's id (a number or a string) as a string."""
    return str(get_field(entry, key, (int, str), path, where))


def first_existing(candidates: Iterable[Path]) -> Path:
    """The first candidate that is a file, else the first candidate (reported as missing later)."""
    candidates = list(candidates)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]


def drop_missing_images(records: list[CaptionRecord], source: Path, images: Path,
                        skip_missing: bool, report: ReadReport | None) -> list[CaptionRecord]:
    """Records whose image exists; missing ones are an error unless `skip_missing`, then counted."""
    present = [record for record in records if record.image_path.is_file()]
    missing = [record.image_path for record in records if not record.image_path.is_file()]
    if not missing:
        return present
    examples = [str(path) for path in missing[:MISSING_EXAMPLES_SHOWN]]
    if not skip_missing:
        more = ", ..." if len(missing) > len(examples) else ""
        raise DatasetError(
            f"{len(missing)} of {len(records)} image(s) listed in {source} are missing under {images} "
            f"(first: {', '.join(examples)}{more}); {SKIP_MISSING_HINT}"
        )
    log.warning("%s: skipped %d record(s) whose image is missing under %s", source, len(missing), images)
    if report is not None:
        report.missing_images += len(missing)
        report.missing_examples.extend(examples)
    return present


def select_split(records: list[CaptionRecord], split: str | None, source: Path) -> list[CaptionRecord]:
    """Records of `split` (all when None), or of several joined by '+' (`train+restval`: Karpathy's 113,287
    training images, as captioning papers train on); a split the file does not hold is an error."""
    if split is None:
        return records
    wanted = [part.strip() for part in split.split("+")]
    if not all(wanted):
        raise DatasetError(f"{source}: split '{split}' has an empty name; give one or several joined by '+'")
    available = sorted({record.split for record in records})
    absent = [part for part in wanted if part not in available]
    if records and absent:
        raise DatasetError(f"{source} has no split '{absent[0]}'; it holds: {', '.join(available)}")
    return [record for record in records if record.split in wanted]


def finish_read(records: list[CaptionRecord], *, source: Path, images: Path, split: str | None,
           skip_missing: bool, report: ReadReport | None) -> list[CaptionRecord]:
    """The common tail of every reader: split filter, then the missing-image check, then the report."""
    selected = select_split(records, split, source)
    kept = drop_missing_images(selected, source, images, skip_missing, report)
    if report is not None:
        report.source = str(source)
        report.records = len(kept)
    return kept
