"""Download one URL to one file: resumable over HTTP Range, checked for size and checksum, with a progress line.

The bytes go to `<target>.part` first; an interrupted transfer (a dropped connection, a stopped command) leaves
that file, and the next try asks the server for the rest (`Range: bytes=N-`). A server that ignores Range (200
instead of 206) is read from the start again. The file takes its final name only once its size matches the
server's Content-Length (and the expected size, where one is known) and its SHA-256 matches the expected one,
where one is given: a mismatch deletes the partial file and raises, so a corrupt download is never used.
Standard library only (urllib), so it works wherever Python does.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

CHUNK_BYTES = 1 << 20
USER_AGENT = "captionlab-data-fetch/1 (+https://github.com; python urllib)"


class DownloadError(Exception):
    """A download that could not finish, or finished with the wrong bytes (which are then deleted)."""


class Progress:
    """A one-line progress bar on a stream (stderr by default), redrawn at most ten times a second."""

    def __init__(self, label: str, total: int | None, done: int = 0, stream: TextIO | None = None,
                 unit: str = "bytes") -> None:
        self.label, self.total, self.done, self.unit = label, total, done, unit
        self.stream = stream if stream is not None else sys.stderr
        self._drawn_at = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        if time.monotonic() - self._drawn_at >= 0.1:
            self.draw()

    def draw(self, end: str = "") -> None:
        self._drawn_at = time.monotonic()
        if self.total:
            filled = int(30 * min(self.done, self.total) / self.total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {100 * self.done / self.total:5.1f}%"
            amount = f"{self._amount(self.done)}/{self._amount(self.total)}"
        else:
            bar, amount = "", self._amount(self.done)
        self.stream.write(f"\r{self.label} {bar} {amount}{end}")
        self.stream.flush()

    def close(self) -> None:
        self.draw(end="\n")

    def _amount(self, count: int) -> str:
        return _megabytes(count) if self.unit == "bytes" else f"{count} {self.unit}"


def download(url: str, target: Path, *, expected_bytes: int | None = None, sha256: str = "", retries: int = 3,
             timeout: float = 60.0, progress: bool = True, label: str = "") -> Path:
    """Fetch `url` into `target` (skipped when `target` exists), resuming a `.part` file left by an earlier try.

    Retries a dropped connection `retries` times, each resuming where the last stopped; raises DownloadError when
    the server refuses, the bytes never all arrive, or the size or SHA-256 is not the expected one."""
    target = Path(target)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    last_problem = ""
    for _ in range(retries + 1):
        try:
            total = _transfer(url, part, timeout, label or target.name, progress)
        except (ConnectionError, TimeoutError, http.client.IncompleteRead, urllib.error.URLError) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                raise DownloadError(f"{url}: the server answered HTTP {exc.code} ({exc.reason})") from None
            last_problem = f"{type(exc).__name__}: {exc}"
            continue
        if total is not None and part.stat().st_size < total:
            last_problem = f"the connection closed at byte {part.stat().st_size} of {total}"
            continue
        _verify(part, url, total, expected_bytes, sha256)
        part.replace(target)
        return target
    raise DownloadError(f"{url}: gave up after {retries + 1} tries ({last_problem}); "
                        f"run the command again to resume from {part.stat().st_size if part.exists() else 0} bytes")


def _transfer(url: str, part: Path, timeout: float, label: str, show_progress: bool) -> int | None:
    """Append the rest of `url` to `part`; returns the whole file's size as the server states it (None if not)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file is already whole
            return have
        raise
    with response:
        if have and response.status != 206:
            have = 0  # the server ignored Range: start again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = Progress(label, total, have) if show_progress else None
        with open(part, "ab" if have else "wb") as sink:
            while True:
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                sink.write(chunk)
                if bar:
                    bar.advance(len(chunk))
        if bar:
            bar.close()
    return total


def _verify(part: Path, url: str, total: int | None, expected_bytes: int | None, sha256: str) -> None:
    size = part.stat().st_size
    wrong = None
    if total is not None and size != total:
        wrong = f"{size} bytes arrived, the server announced {total}"
    elif expected_bytes is not None and size != expected_bytes:
        wrong = f"{size} bytes arrived, the source table says {expected_bytes}"
    elif sha256 and file_sha256(part) != sha256.lower():
        wrong = f"SHA-256 {file_sha256(part)} is not the published {sha256.lower()}"
    if wrong:
        part.unlink()
        raise DownloadError(f"{url}: refused: {wrong}; the partial file was deleted")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """Raise DownloadError unless `folder`'s disk has `needed_bytes` free (checked before anything downloads)."""
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise DownloadError(f"not enough disk space under {folder}: about {_megabytes(needed_bytes)} needed, "
                            f"{_megabytes(free)} free; free some space or choose another --root")


def _megabytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"
