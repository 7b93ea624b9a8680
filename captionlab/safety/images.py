"""Opening an uploaded image safely: an RGB PIL image, or ImageRejected with a message for the user.

    from captionlab.safety.images import ImageRejected, open_upload
    image = open_upload("upload.jpg")   # RGB, EXIF-rotated, first frame, alpha composited on white

A file is refused before anything expensive happens when it is not a regular file, is empty, is
over the upload limit (bytes; `$CAPTIONLAB_MAX_UPLOAD_MB`, `python app.py --max-upload-mb`), or
its header promises too long a side or too many pixels (a decompression bomb). Only common photo
formats are decoded (no EPS, which runs Ghostscript, nor the rarer plugins). A truncated or corrupt
file is refused with the decoder's complaint. What is accepted is normalised: EXIF orientation
applied, the first frame of an animation, 16-bit and float pixels scaled to 8 bits, CMYK and
palettes converted, transparency composited on white, and at most MAX_KEPT_SIDE pixels on the
longer side (the captioners look at 224-672 px anyway). Decoding memory is bounded: at most
MAX_DECODED_PIXELS are decoded (a large JPEG is decoded at a reduced scale first), and the decoded
image is shrunk by a whole factor before any conversion (`reduced`).
"""

from __future__ import annotations

import math
import os
import stat
import threading
import warnings
from pathlib import Path

from PIL import Image, ImageOps

MAX_UPLOAD_ENV = "CAPTIONLAB_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 20.0
MIN_UPLOAD_MB = 0.01  # 10 KB: below that no photo fits
MAX_UPLOAD_MB = 1024.0  # 1 GB: far past any photo, still a number gradio's size check can hold
MAX_PIXELS = 40_000_000  # pixels a file's header may promise; PIL's own bomb limit (Image.MAX_IMAGE_PIXELS) is ~89M
MAX_DECODED_PIXELS = 16_000_000  # pixels actually decoded (a JPEG after its reduced-scale draft): at most 64 MB
MAX_SIDE = 16_384
MAX_KEPT_SIDE = 1344  # twice the largest side the captioners look at (LLaVA-1.6's anyres grid: 672; CLIP: 224-336)
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
FORMATS_TEXT = "PNG, JPEG, WebP, GIF, BMP, TIFF or AVIF"
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_open_lock = threading.Lock()  # warnings.catch_warnings is process-wide: one header read at a time


class ImageRejected(ValueError):
    """An upload that is not used; str() is a message for the user that starts with the file's name."""


def parse_upload_mb(value: str | float) -> float:
    """An upload limit in megabytes, from MIN_UPLOAD_MB to MAX_UPLOAD_MB; else ValueError saying so (inf, nan and
    1e-9 are not limits: the first two overflow or disable the check, the last refuses every file)."""
    try:
        megabytes = float(value)
    except (TypeError, ValueError):
        megabytes = math.nan
    if not math.isfinite(megabytes) or not MIN_UPLOAD_MB <= megabytes <= MAX_UPLOAD_MB:
        raise ValueError(f"the upload limit must be a number of megabytes from {MIN_UPLOAD_MB:g} to "
                         f"{MAX_UPLOAD_MB:g}, not {value!r}")
    return megabytes


def max_upload_bytes() -> int:
    """The upload limit in bytes: $CAPTIONLAB_MAX_UPLOAD_MB megabytes if valid (`parse_upload_mb`), else
    DEFAULT_MAX_UPLOAD_MB."""
    try:
        megabytes = parse_upload_mb(os.environ.get(MAX_UPLOAD_ENV, DEFAULT_MAX_UPLOAD_MB))
    except ValueError:
        megabytes = DEFAULT_MAX_UPLOAD_MB
    return int(megabytes * 1024 * 1024)


def _megabytes(size: int) -> str:
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB" if size >= 1024 else f"{size} bytes"
    return f"{size / (1024 * 1024):.1f} MB"


def check_file(path: Path, max_bytes: int) -> None:
    """Refuse what is not a regular, non-empty file within the byte limit."""
    try:
        info = path.stat()
    except (OSError, ValueError) as exc:
        raise ImageRejected(f"{path.name}: cannot be read ({type(exc).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageRejected(f"{path.name}: not a file")
    if info.st_size == 0:
        raise ImageRejected(f"{path.name}: the file is empty (0 bytes)")
    if info.st_size > max_bytes:
        raise ImageRejected(f"{path.name}: {_megabytes(info.st_size)} is over the upload limit of "
                            f"{_megabytes(max_bytes)}")


def check_size(name: str, width: int, height: int, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse dimensions that are empty, too long on a side, or too many pixels to decode."""
    if width < 1 or height < 1:
        raise ImageRejected(f"{name}: the image has no pixels ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > max_pixels:
        raise ImageRejected(f"{name}: {width}x{height} is too large (at most {MAX_SIDE} pixels a side and "
                            f"{max_pixels / 1_000_000:g} megapixels)")


def _scaled_to_bytes(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale as 8-bit 'L' (PIL's own conversion clips them to white)."""
    import numpy as np

    pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):
        pixels = pixels / 257.0  # 16-bit range
    elif image.mode == "F" and low >= 0 and high <= 1.0:
        pixels = pixels * 255.0  # float in [0, 1]
    elif low < 0 or high > 255:
        pixels = (pixels - low) * (255.0 / max(high - low, 1e-12))  # anything else: stretched
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: transparency composited on white, high bit depths scaled to 8 bits."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _scaled_to_bytes(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def reduced(image: Image.Image, max_side: int = MAX_KEPT_SIDE) -> Image.Image:
    """`image` shrunk by a whole factor (a box filter, cheap) to no less than `max_side` on its longer side, before
    any conversion: mode changes, EXIF rotation and 16/32-bit scaling then work on the small copy, not on the
    decoded full size (a 77 KB 16-bit PNG of 40 megapixels cost ~1 GB that way)."""
    factor = max(image.size) // max_side
    if factor < 2:
        return image
    sixteen_bit = image.mode.startswith("I;16")
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif sixteen_bit:  # reduce() takes 32-bit integers, not 16-bit ones
        image = image.convert("I")
    small = image.reduce(factor)
    return small.point(lambda value: value * (1 / 257)) if sixteen_bit else small  # to 0-255, as to_rgb would


def _decode(path: Path, max_pixels: int) -> Image.Image:
    name = path.name
    with _open_lock, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(path, formats=ALLOWED_FORMATS)
    with image:
        check_size(name, *image.size, max_pixels=max_pixels)
        if image.format in ("JPEG", "MPO"):  # decoded at a reduced scale (1/2 to 1/8; MPO: multi-picture JPEG)
            image.draft("RGB", (MAX_KEPT_SIDE, MAX_KEPT_SIDE))
        check_size(name, *image.size, max_pixels=min(max_pixels, MAX_DECODED_PIXELS))
        image.seek(0)  # animations: the first frame
        image.load()
        small = reduced(image)
        try:
            upright = ImageOps.exif_transpose(small)
        except Exception:  # malformed EXIF: keep the pixels as stored
            upright = small.copy() if small is image else small
        del small
    rgb = to_rgb(upright)
    rgb.thumbnail((MAX_KEPT_SIDE, MAX_KEPT_SIDE))
    return rgb


def open_upload(path: str | Path, max_bytes: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The uploaded file as an RGB image, or ImageRejected saying what is wrong with it."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    check_file(path, max_upload_bytes() if max_bytes is None else max_bytes)
    try:
        return _decode(path, max_pixels)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected(f"{path.name}: not an image ({FORMATS_TEXT} expected)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        raise ImageRejected(f"{path.name}: too large to decode safely (at most {max_pixels / 1_000_000:g} "
                            f"megapixels)") from None
    except Exception as exc:  # decoders raise many types on damaged data (OSError, SyntaxError, struct.error, ...)
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ImageRejected(f"{path.name}: the image is corrupt or truncated ({detail})") from None
