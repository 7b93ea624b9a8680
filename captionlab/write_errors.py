"""A failed write, in the user's words: a full disk says "no space left on device", whoever noticed it.

A full disk reaches captionlab in several guises: OSError ENOSPC (or EDQUOT) from a file write, SQLite's
"database or disk is full", and SQLite's "disk I/O error" when it could not grow its journal. The last one also
has other causes, so it is called a full disk only when the workspace's file system has (almost) no room left.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 1 << 20  # under 1 MiB free: SQLite's "disk I/O error" is the disk being full
NO_SPACE = "no space left on device"


def is_disk_full(exc: BaseException, where: Path | None = None) -> bool:
    """Whether `exc` (or what it was raised from) is a full disk."""
    while exc is not None:
        if getattr(exc, "errno", None) in FULL_ERRNOS:
            return True
        text = str(exc).lower()
        if "database or disk is full" in text or NO_SPACE in text:
            return True
        if "disk i/o error" in text and _nearly_full(where):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe(exc: BaseException, where: Path | None = None) -> str:
    """The message to show for a failed write: the full-disk sentence, else the error's own text."""
    if is_disk_full(exc, where):
        place = f" (writing under {where})" if where is not None else ""
        return f"{NO_SPACE}{place}: free some disk space and try again"
    return str(exc) or type(exc).__name__


def _nearly_full(where: Path | None) -> bool:
    from captionlab import paths

    try:
        return shutil.disk_usage(where or paths.workspace()).free < NEARLY_FULL_BYTES
    except OSError:
        return False
