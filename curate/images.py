"""Turn an image payload (base64 text, raw bytes, a file path) into the schema's image struct.

Every image is opened with Pillow once at ingest: a payload Pillow cannot read, or one
larger than the pixel limit (a decompression bomb), quarantines its row here instead of
crashing a later stage. The original bytes are kept as they are (no re-encoding) so the
content hash identifies the source image.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from curate.errors import RowError

#: Pillow's own decompression-bomb threshold (about 89.5 megapixels).
DEFAULT_MAX_PIXELS = 89_478_485


def decode_base64(text: str, field: str) -> bytes:
    """Strict base64 decode; a data-URI prefix is accepted, and so is whitespace (line breaks).

    Payloads are tens of kilobytes and rarely hold whitespace, so the strict decoder runs on
    the text as it is first; only if that fails is whitespace removed and the decode retried
    (the same result and the same error as always removing it, without copying every payload).
    """
    if text.startswith("data:") and "," in text[:100]:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RowError("bad_base64", field, f"field {field!r} is not valid base64 ({exc})") from exc


def image_struct(data: bytes, *, path: str | None, field: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Validate ``data`` as an image and describe it: bytes, path, width, height, sha256."""
    if not data:
        raise RowError("empty_image", field, f"field {field!r} holds an empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise RowError(
                        "image_too_large",
                        field,
                        f"field {field!r}: image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}",
                    )
                img.verify()
            _decode_fully(data)
    except RowError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RowError("bad_image", field, f"field {field!r}: Pillow cannot open the image ({type(exc).__name__}: {exc})") from exc
    return {
        "bytes": data,
        "path": path,
        "width": width,
        "height": height,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _decode_fully(data: bytes) -> None:
    """Decode every pixel: ``verify`` reads headers and checksums only, so a truncated JPEG or a PNG
    whose IDAT does not inflate passed ingest and then stopped ``screen`` for the whole workspace.
    Truncated data must fail here, whatever another module set ``LOAD_TRUNCATED_IMAGES`` to."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def image_from_file(path: Path | str, *, root: Path | None, field: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Read an image file that must lie inside ``root`` (paths escaping it are refused)."""
    text = str(path)
    if "\x00" in text or any("\ud800" <= ch <= "\udfff" for ch in text):
        raise RowError("bad_image_path", field, f"field {field!r}: image path {text[:80]!r} holds a NUL byte or text that is not UTF-8")
    if root is None:
        raise RowError("image_missing", field, f"field {field!r}: image path {text[:80]!r} has no folder to be read from")
    try:
        root = root.resolve()
        full = (root / path).resolve()
        if not full.is_relative_to(root):
            raise RowError("image_path_outside_root", field, f"field {field!r}: image path {text[:80]!r} escapes the image folder {root}")
        if not full.is_file():
            raise RowError("image_missing", field, f"field {field!r}: image file {full} does not exist")
        data = full.read_bytes()
    except OSError as exc:  # a name too long, a folder that cannot be read, ...
        raise RowError("bad_image_path", field, f"field {field!r}: image path {text[:80]!r} cannot be read ({exc.strerror or type(exc).__name__})") from exc
    return image_struct(data, path=str(full), field=field, max_pixels=max_pixels)
