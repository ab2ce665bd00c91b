"""Is this file a whole image, and what are its format and size?

Most files are JPEG or PNG, and ingest looks at every one, so those are read from their
headers by hand: no pixel is decoded, and truncation is caught from the end of the file
(a JPEG ends with its EOI marker after its scan data, a PNG with its IEND chunk, a GIF with
its trailer, a BMP or WebP is as long as its header says). Everything else, and every file
when a full decode is asked for, goes through Pillow.
"""

from __future__ import annotations

import contextlib
import io
import struct
from dataclasses import dataclass
from typing import Iterator

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


class Rejected(Exception):
    """The reason a file is kept out of a version."""


def inspect_image(data: bytes, full_decode: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Return the image's format and size, or raise Rejected with the reason."""
    if not data:
        raise Rejected("empty file (0 bytes)")
    info = None if full_decode else _from_header(data)
    if info is None:
        info = _with_pillow(data, max_pixels)
    if info.width <= 0 or info.height <= 0:
        raise Rejected(f"{info.format} header gives an impossible size {info.width}x{info.height}")
    if info.width * info.height > max_pixels:
        raise Rejected(f"decompression bomb: {info.width}x{info.height} is over {max_pixels:,} pixels")
    return info


def _from_header(data: bytes) -> ImageInfo | None:
    """The fast path for the formats whose completeness shows in their bytes; None means ask Pillow."""
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    if data.startswith(_PNG_SIGNATURE):
        return _png(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data)
    if data.startswith(b"BM") and len(data) >= 26:
        return _bmp(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        declared = struct.unpack_from("<I", data, 4)[0] + 8
        if len(data) < declared:
            raise Rejected(f"truncated WebP: {len(data):,} of {declared:,} bytes")
    return None


def _jpeg(data: bytes) -> ImageInfo:
    position, size, length = 2, None, len(data)
    while position + 4 <= length:
        if data[position] != 0xFF:
            raise Rejected("corrupt JPEG: bad marker in the header")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        segment = struct.unpack_from(">H", data, position + 2)[0]
        if marker in _JPEG_SOF and position + 9 <= length:
            height, width = struct.unpack_from(">HH", data, position + 5)
            size = (width, height)
        if marker == 0xDA:  # start of scan: the image data follows, and must end with EOI
            if size is None:
                raise Rejected("corrupt JPEG: no frame header before the image data")
            if data.rfind(b"\xff\xd9", position) == -1:
                raise Rejected("truncated JPEG: no end-of-image marker after the image data")
            return ImageInfo("JPEG", *size)
        position += 2 + segment
    raise Rejected("truncated JPEG: the file ends inside its header")


def _png(data: bytes) -> ImageInfo:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise Rejected("truncated PNG: no complete IHDR chunk")
    width, height = struct.unpack_from(">II", data, 16)
    if data.rfind(b"IEND", max(0, len(data) - 64)) == -1:
        raise Rejected("truncated PNG: no IEND chunk at the end")
    return ImageInfo("PNG", width, height)


def _gif(data: bytes) -> ImageInfo:
    if len(data) < 13:
        raise Rejected("truncated GIF: incomplete header")
    width, height = struct.unpack_from("<HH", data, 6)
    if data.rstrip(b"\x00")[-1:] != b";":
        raise Rejected("truncated GIF: no trailer byte at the end")
    return ImageInfo("GIF", width, height)


def _bmp(data: bytes) -> ImageInfo | None:
    declared = struct.unpack_from("<I", data, 2)[0]
    header = struct.unpack_from("<I", data, 14)[0]
    if header < 40:  # the old OS/2 header: rare, let Pillow read it
        return None
    if len(data) < declared:
        raise Rejected(f"truncated BMP: {len(data):,} of {declared:,} bytes")
    width, height = struct.unpack_from("<ii", data, 18)
    return ImageInfo("BMP", width, abs(height))


def _with_pillow(data: bytes, max_pixels: int) -> ImageInfo:
    with _pillow_reading():
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            info = _pillow_info(image, max_pixels)
            image.load()
            return info


@contextlib.contextmanager
def _pillow_reading() -> Iterator[None]:
    """Whatever Pillow raises on a file that is not a whole image becomes the reason it is rejected."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # we apply our own limit, with our own message
    try:
        yield
    except UnidentifiedImageError:
        raise Rejected("not an image (no format Pillow knows)") from None
    except Rejected:
        raise
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as error:
        raise Rejected(f"truncated or corrupt image: {error}") from None


def _pillow_info(image, max_pixels: int) -> ImageInfo:
    """Format and size of an image Pillow opened (its header only), refused if not one we take."""
    fmt = (image.format or "").upper()
    if fmt not in ACCEPTED_FORMATS:
        raise Rejected(f"unsupported image format {fmt or 'unknown'} (accepted: {', '.join(ACCEPTED_FORMATS)})")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise Rejected(f"{fmt} header gives an impossible size {width}x{height}")
    if width * height > max_pixels:
        raise Rejected(f"decompression bomb: {width}x{height} is over {max_pixels:,} pixels")
    return ImageInfo(fmt, width, height)


LARGE_HEAD_BYTES = 1 << 20
LARGE_TAIL_BYTES = 1 << 16


def inspect_large_file(path: str, size: int, full_decode: bool = False,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """inspect_image for a file too large to read whole: Pillow reads the header from the file,
    and completeness is checked from the tail, so memory stays bounded whatever the file's size
    (a 1 GB file named x.jpg is rejected after reading about 1 MB of it)."""
    with open(path, "rb") as handle:
        head = handle.read(LARGE_HEAD_BYTES)
        handle.seek(max(0, size - LARGE_TAIL_BYTES))
        tail = handle.read(LARGE_TAIL_BYTES)
        handle.seek(0)
        with _pillow_reading():
            from PIL import Image

            with Image.open(handle) as image:
                info = _pillow_info(image, max_pixels)
                _check_tail(info.format, head, tail, size)
                if full_decode:
                    image.load()  # bounded by max_pixels, not by the file's size
                return info


def _check_tail(fmt: str, head: bytes, tail: bytes, size: int) -> None:
    """The end-of-file checks of the header path, from the first and last bytes only."""
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        raise Rejected("truncated JPEG: no end-of-image marker at the end")
    if fmt == "PNG" and tail.rfind(b"IEND", max(0, len(tail) - 64)) == -1:
        raise Rejected("truncated PNG: no IEND chunk at the end")
    if fmt == "GIF" and tail.rstrip(b"\x00")[-1:] != b";":
        raise Rejected("truncated GIF: no trailer byte at the end")
    if fmt == "BMP" and len(head) >= 6 and size < struct.unpack_from("<I", head, 2)[0]:
        raise Rejected(f"truncated BMP: {size:,} of {struct.unpack_from('<I', head, 2)[0]:,} bytes")
    if fmt == "WEBP" and len(head) >= 8 and size < struct.unpack_from("<I", head, 4)[0] + 8:
        raise Rejected(f"truncated WebP: {size:,} of {struct.unpack_from('<I', head, 4)[0] + 8:,} bytes")
