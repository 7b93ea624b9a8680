"""CC3M (Conceptual Captions) validation, two ways.

`read` takes Google's own `Validation_GCC-1.1.0-Validation.tsv`: no header, one image per
line, two tab-separated columns, the alt-text caption and the image URL:

    a very typical bus station<TAB>http://lh6.ggpht.com/-IvRtNLNcG8o/.../bus-station.jpg
    sierra looked stunning in this top and this skirt<TAB>http://78.media.tumblr.com/.../tumblr_x.jpg

or the same file as many people keep their downloaded copy, the second column a local image
path (relative to the images folder, or absolute) instead of the URL:

    a very typical bus station<TAB>00000/000000002.jpg

A first line is a header only when its words say so (every cell a column name such as
`caption`, `url`, `image`, `image_path`, `file_name`: the `caption<TAB>url` header img2dataset
users add); it is not read as a caption and the read report counts it. Any other line is a
caption, so captions and images never shift by a row. The URLs are not fetched; each row's
image is, in this order:
  1. its local path, when the second column is one;
  2. where the images folder is an img2dataset output (`readers/img2dataset.py`: shard folders
     with `.json` sidecars, or webdataset `.tar` shards), the downloaded sample whose sidecar
     `url` is the row's URL (its `caption` breaks ties between rows sharing a URL): the sidecar,
     not the row number, pairs an image with its caption; a URL img2dataset did not download is
     a missing image;
  3. otherwise, in the images folder and its immediate subfolders: `{N:09d}.jpg` (`.png`,
     `.webp`, `.jpeg`), N the row's number counting from 0 (blank lines and a header not
     counted): img2dataset's name with its default 10,000 samples per shard; else the URL's
     basename (percent-decoded, without the query string), only where no other row's URL has
     the same basename (CC3M has many `image.jpg`s: one file cannot be each of them).
A row with none is a missing image (an error, or left out with `skip_missing`).
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
from captionlab.data.readers import img2dataset
from captionlab.data.records import CaptionRecord

SPLIT = "val"
IMAGE_EXTENSIONS = (".jpg", ".png", ".webp", ".jpeg")
REQUIRED_COLUMNS = ("caption", "image")
# The words a header line of a caption/image TSV is made of (img2dataset's --url_col / --caption_col names and the
# usual spellings of a local path column); a first line is a header only when every cell is one of them.
HEADER_WORDS = frozenset({"caption", "captions", "text", "alt", "alt_text", "url", "urls", "image_url", "img_url",
                          "link", "image", "images", "img", "image_path", "path", "file", "filename", "file_name",
                          "filepath", "file_path", "image_file", "image_name", "img_path", "key", "id",
                          "image_id"})


def read(annotations: Path, images: Path, split: str | None = None, domain: str | None = None, *,
         skip_missing: bool = False, report: ReadReport | None = None) -> list[CaptionRecord]:
    """Read Google's CC3M validation TSV (caption, url or local path), finding each row's image."""
    annotations, images = check_inputs(annotations, images, "CC3M TSV file")
    rows = _rows(annotations)
    if rows and _is_header(rows[0][1]):
        line_number, header = rows.pop(0)
        if report is not None:
            reason = f"line {line_number} read as a header ({'<TAB>'.join(cell.strip() for cell in header)})"
            report.dropped_rows[reason] = report.dropped_rows.get(reason, 0) + 1
    for line_number, cells in rows:
        if len(cells) != 2:
            raise DatasetError(f"{annotations}: line {line_number} has {len(cells)} tab-separated column(s); "
                               "expected 2 (caption, url or image path)")
    locate = _locator(rows, images)
    records = [CaptionRecord(image_id=str(index), image_path=locate(index, line_number, caption, target.strip()),
                             references=(caption.strip(),), split=SPLIT, domain=domain or "cc3m")
               for index, (line_number, (caption, target)) in enumerate(rows)]
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


def _is_url(text: str) -> bool:
    return "://" in text


def _locator(rows: list[tuple[int, list[str]]], images: Path):
    """locate(row index, line number, caption, url or path) -> the row's image file (see the module docstring)."""
    urls = [target.strip() for _, (_, target) in rows if _is_url(target)]
    downloaded = _downloads_by_url(images) if urls and img2dataset.is_img2dataset_folder(images) else None
    url_names = Counter(_url_name(url) for url in urls)
    files = _files_by_name(images) if urls and downloaded is None else {}

    def locate(index: int, line_number: int, caption: str, target: str) -> Path:
        if not _is_url(target):
            return images / target  # an absolute path replaces the folder
        if downloaded is not None:
            return _downloaded_image(downloaded.get(target, []), caption, line_number, images)
        name = _url_name(target)
        return _by_name(index, name if name and url_names[name] == 1 else None, files, images)

    return locate


def _downloads_by_url(folder: Path) -> dict[str, list[img2dataset.Sample]]:
    """An img2dataset output's downloaded samples, by their sidecar's URL."""
    by_url: dict[str, list[img2dataset.Sample]] = {}
    for sample in img2dataset.index_folder(folder):
        if sample.status == img2dataset.SUCCESS and sample.image is not None:
            by_url.setdefault(sample.url, []).append(sample)
    return by_url


def _downloaded_image(samples: list[img2dataset.Sample], caption: str, line_number: int, images: Path) -> Path:
    """The image of the sample downloaded from a row's URL (the one with the row's caption where several were);
    a path that does not exist when img2dataset downloaded none."""
    matching = [sample for sample in samples if sample.caption.strip() == caption.strip()] or samples
    if matching and matching[0].image is not None:
        return matching[0].image
    return images / f"(no img2dataset download for line {line_number})"


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
    """A first row that names its columns: every cell a column name (a caption line has words, and a URL or path)."""
    words = [cell.strip().lower() for cell in cells]
    return len(words) >= 2 and all(word in HEADER_WORDS for word in words)


def _url_name(url: str) -> str:
    """The URL's file name, percent-decoded, without the query string ('' when it has none)."""
    return unquote(posixpath.basename(urlsplit(url.strip()).path))


def _by_name(index: int, url_name: str | None, files: dict[str, Path], images: Path) -> Path:
    """The image file of row `index` (`url_name`: its URL's file name where no other row shares it); the expected
    img2dataset name when none is found."""
    candidates = [f"{index:09d}{extension}" for extension in IMAGE_EXTENSIONS]
    if url_name:
        candidates.append(url_name)
    for name in candidates:
        if name in files:
            return files[name]
    return images / candidates[0]
