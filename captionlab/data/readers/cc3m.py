"""CC3M (Conceptual Captions) validation, two ways.

`read` takes Google's own `Validation_GCC-1.1.0-Validation.tsv`: no header, one image per
line, two tab-separated columns, the alt-text caption and the image URL:

    a very typical bus station<TAB>http://lh6.ggpht.com/-IvRtNLNcG8o/.../bus-station.jpg
    sierra looked stunning in this top and this skirt<TAB>http://78.media.tumblr.com/.../tumblr_x.jpg

The URLs are not fetched; the images must already be in the images folder. Row N (counting
from 0, blank lines not counted; a first line whose second cell is not a URL, such as the
`caption<TAB>url` header img2dataset users add, is taken as a header and skipped) maps to the
first of these that exists, looked up in the images folder and in its immediate subfolders
(img2dataset's `00000/`, `00001/`, ...):
  1. `{N:09d}.jpg`, `.png`, `.webp` or `.jpeg`: the name img2dataset writes with its default
     10,000 samples per shard (key = shard * 10000 + index in shard = N);
  2. the URL's basename (percent-decoded, without the query string), only where no other row's
     URL has the same basename (CC3M has many `image.jpg`s: one file cannot be each of them).
A row with neither is a missing image (an error, or left out with `skip_missing`).
image_id = str(N); references = (caption,); split "val"; domain "cc3m" unless given.

`read_tsv` takes a plain TSV with a header naming at least `caption` and `image`, for data
laid out by hand (an optional `image_id` column sets the id; several rows naming the same
image give one record with several references):

    caption<TAB>image
    a red bus at a station<TAB>val/bus.jpg

`image` is a path relative to the images folder, or absolute; image_id = the `image_id`
column, else `image` as written; split "val"; domain "cc3m" unless given.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

from captionlab.data.errors import DatasetError, ReadReport, check_inputs, finish_read, read_text
from captionlab.data.records import CaptionRecord

SPLIT = "val"
IMAGE_EXTENSIONS = (".jpg", ".png", ".webp", ".jpeg")
GOOGLE_HEADER = ("caption", "url")
REQUIRED_COLUMNS = ("caption", "image")


def read(annotations: Path, images: Path, split: str | None = None, domain: str | None = None, *,
         skip_missing: bool = False, report: ReadReport | None = None) -> list[CaptionRecord]:
    """Read Google's CC3M validation TSV (caption, url), finding each row's downloaded image."""
    annotations, images = check_inputs(annotations, images, "CC3M TSV file")
    rows = _rows(annotations)
    if rows and _is_header(rows[0][1]):
        rows = rows[1:]
    for line_number, cells in rows:
        if len(cells) != 2:
            raise DatasetError(f"{annotations}: line {line_number} has {len(cells)} tab-separated column(s); "
                               "expected 2 (caption, url)")
    url_names = Counter(_url_name(url) for _, (_, url) in rows)
    files = _files_by_name(images)
    records = []
    for index, (_, (caption, url)) in enumerate(rows):
        name = _url_name(url)
        unique_name = name if name and url_names[name] == 1 else None
        records.append(CaptionRecord(image_id=str(index), image_path=_locate(index, unique_name, files, images),
                                     references=(caption.strip(),), split=SPLIT, domain=domain or "cc3m"))
    return finish_read(records, source=annotations, images=images, split=split,
                       skip_missing=skip_missing, report=report)


def read_tsv(annotations: Path, images: Path, split: str | None = None, domain: str | None = None, *,
             skip_missing: bool = False, report: ReadReport | None = None) -> list[CaptionRecord]:
    """Read a headed `caption<TAB>image` TSV, one record per distinct image."""
    annotations, images = check_inputs(annotations, images, "caption TSV file")
    rows = _rows(annotations)
    if not rows:
        raise DatasetError(f"{annotations}: empty file; expected a header line 'caption<TAB>image'")
    header_line, header = rows[0]
    columns = {name.strip().lower(): position for position, name in enumerate(header)}
    absent = [name for name in REQUIRED_COLUMNS if name not in columns]
    if absent:
        raise DatasetError(f"{annotations}: the header (line {header_line}) lacks column(s) {', '.join(absent)}; "
                           f"found: {', '.join(header)}")
    references: dict[str, list[str]] = {}
    paths: dict[str, Path] = {}
    for line_number, cells in rows[1:]:
        if len(cells) != len(header):
            raise DatasetError(f"{annotations}: line {line_number} has {len(cells)} tab-separated column(s); "
                               f"the header has {len(header)}")
        image = cells[columns["image"]].strip()
        if not image:
            raise DatasetError(f"{annotations}: line {line_number} has an empty 'image' column")
        image_id = cells[columns["image_id"]].strip() if "image_id" in columns else image
        paths.setdefault(image_id, images / image)  # an absolute `image` replaces the folder
        references.setdefault(image_id, []).append(cells[columns["caption"]].strip())
    records = [CaptionRecord(image_id=image_id, image_path=paths[image_id], references=tuple(captions),
                             split=SPLIT, domain=domain or "cc3m")
               for image_id, captions in references.items()]
    return finish_read(records, source=annotations, images=images, split=split,
                       skip_missing=skip_missing, report=report)


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, cells) for each non-blank line."""
    lines = read_text(path, "TSV file").splitlines()
    return [(number, line.split("\t")) for number, line in enumerate(lines, start=1) if line.strip()]


def _files_by_name(images: Path) -> dict[str, Path]:
    """Files in the images folder and its immediate subfolders, by file name (the first found wins)."""
    found: dict[str, Path] = {}
    folders = [images] + sorted(entry for entry in images.iterdir() if entry.is_dir())
    for folder in folders:
        for entry in sorted(folder.iterdir()):
            if entry.is_file():
                found.setdefault(entry.name, entry)
    return found


def _is_header(cells: list[str]) -> bool:
    """A first row that names its columns: its second cell is not a URL (Google's rows all have one there)."""
    return tuple(cell.strip().lower() for cell in cells) == GOOGLE_HEADER or (len(cells) == 2 and "://" not in cells[1])


def _url_name(url: str) -> str:
    """The URL's file name, percent-decoded, without the query string ('' when it has none)."""
    return unquote(posixpath.basename(urlsplit(url.strip()).path))


def _locate(index: int, url_name: str | None, files: dict[str, Path], images: Path) -> Path:
    """The image file of row `index` (`url_name`: its URL's file name where no other row shares it); the expected
    img2dataset name when none is found."""
    candidates = [f"{index:09d}{extension}" for extension in IMAGE_EXTENSIONS]
    if url_name:
        candidates.append(url_name)
    for name in candidates:
        if name in files:
            return files[name]
    return images / candidates[0]
