"""Which files an API caller may have opened: only those gradio received as uploads from a client.

    path = uploaded_path(value, blocks.upload_file_set, gradio.utils.get_upload_folder())  # else NotAnUpload

gradio checks a FileData (a dict whose meta `_type` is "gradio.FileData") against its upload folder
before a function sees it, but passes a bare string or a dict without that meta through untouched:
an endpoint that opened whatever path it was given would read any file on the server. So a path is
accepted only when all three hold: it arrives as a FileData, gradio's own record of this app's uploads
(`Blocks.upload_file_set`, filled by its /upload route) holds it, and it lies inside the upload
folder. Everything else gets the one NOT_AN_UPLOAD message, which says nothing about the path given
(whether it exists, its size or kind): the check never touches the filesystem before the path is
known to be an upload.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

FILE_DATA_TYPE = "gradio.FileData"
NOT_AN_UPLOAD = ("only an image uploaded to this app can be captioned: upload the file first (POST "
                 "/gradio_api/upload, or gradio_client's handle_file) and pass the FileData it returns")


class NotAnUpload(ValueError):
    """A value that is not a file this app received as an upload; str() is always NOT_AN_UPLOAD."""

    def __init__(self) -> None:
        super().__init__(NOT_AN_UPLOAD)


def _file_data_path(value: Any) -> str | None:
    if hasattr(value, "model_dump"):  # a gradio FileData model rather than its dict
        value = value.model_dump()
    if not isinstance(value, dict):
        return None
    meta = value.get("meta")
    if not isinstance(meta, dict) or meta.get("_type") != FILE_DATA_TYPE:
        return None
    path = value.get("path")
    return path if isinstance(path, str) and path and "\0" not in path else None


def uploaded_path(value: Any, uploaded: Collection[str], upload_folder: str) -> str:
    """The absolute path of `value` when it is a FileData of a file in `uploaded` (gradio's record of the
    uploads it received) inside `upload_folder`; else NotAnUpload."""
    path = _file_data_path(value)
    if path is None:
        raise NotAnUpload()
    absolute = os.path.abspath(path)
    if absolute not in {os.path.abspath(str(p)) for p in uploaded}:
        raise NotAnUpload()
    folder = os.path.realpath(upload_folder)
    if os.path.commonpath([os.path.realpath(absolute), folder]) != folder:  # a link out of the folder
        raise NotAnUpload()
    return absolute
