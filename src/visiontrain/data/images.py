"""Decode real-world image files safely into exactly the 'L' or 'RGB' image a model expects.

Hand-written loaders break on RGBA/LA/palette transparency, 16-bit PNGs, CMYK JPEGs, EXIF rotation, animated
GIFs, HTML pages saved as ``.jpg`` and decompression bombs. :func:`open_image` handles all of these and turns
every failure into one :class:`~visiontrain.errors.ImageError` that names the file, the reason and a fix.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import re
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from visiontrain.data.transforms import adapt_channels
from visiontrain.errors import ImageError

_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(_EXTENSIONS)
PIL_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")
DEFAULT_MAX_PIXELS: int = 64 * 2**20

_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_FORMATS_TEXT = "/".join(PIL_FORMATS)
_NOT_IMAGE_HINT = "it may be a web page, text or another format saved with an image extension; re-save it"
_EMPTY_HINT = "nothing was written (failed copy or download?); re-create it or remove it"
_CUT_HINT = "the file is cut short (interrupted copy or download?); re-create it or remove it"
# File signatures of the allowed formats, to tell a cut-short header from a file of another kind.
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"RIFF": "WEBP", b"BM": "BMP"}
_MAGIC |= {b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
_BOMB_HINT = "raise the limit with --max-pixels if you trust this file"
# Errors Pillow's decoders raise for damaged data: anything else escaping them is a bug, not bad input.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` names an image file worth reading, judged by its name alone (no disk access).

    Hidden files and OS junk (``.DS_Store``, macOS ``._*`` resource forks, ``Thumbs.db``, ``__MACOSX``
    folders from zip files) are skipped even when they carry an image extension: they are not images.
    """
    p = Path(path)
    name = p.name
    if not name or name.startswith(".") or name.lower() in _JUNK_NAMES or "__MACOSX" in p.parts:
        return False
    return p.suffix.lower() in IMAGE_EXTENSIONS


def open_image(
    source: str | Path | bytes,
    channels: int = 3,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    draft: int | None = None,
) -> Image.Image:
    """Decode one image into mode 'L' (``channels=1``) or 'RGB' (``channels=3``), fully loaded, file closed.

    EXIF orientation is applied, animated files give their first frame, transparency is alpha-blended onto
    ``background``, 16-bit data is scaled (not clamped) to 8 bits. ``name`` labels errors for bytes input.
    ``draft`` lets JPEGs decode at 1/2, 1/4 or 1/8 scale while both sides stay at least ``draft`` pixels:
    several times faster when the model's input is much smaller than the photo.

    Raises:
        ImageError: the file is missing, unreadable, empty, not a supported image, truncated, corrupt,
            or declares more than ``max_pixels`` pixels.
        ValueError: a bad ``channels``, ``background`` or ``max_pixels`` argument (a caller bug).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if len(background) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in background):
        raise ValueError(f"background must be three ints in 0..255, got {background!r}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels!r}")
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "<bytes>"
        if len(source) == 0:
            raise ImageError(label, "empty file (0 bytes)", _EMPTY_HINT)
        img = _decode(io.BytesIO(source), label, max_pixels, draft)
    else:
        label = name or str(source)
        with _open_file(Path(source), label) as fp:
            img = _decode(fp, label, max_pixels, draft)
    try:
        return _normalize(img, channels, tuple(background))
    except (ValueError, OSError) as exc:  # a mode Pillow decodes but cannot convert (rare TIFF variants)
        raise ImageError(label, f"unsupported colour mode {img.mode} ({exc})", "re-save it as RGB") from None


@dataclass(frozen=True)
class ImageInfo:
    """What a header scan learns about a file without decoding its pixels."""

    width: int
    height: int
    mode: str
    format: str
    decoded: tuple[int, int] | None = None  # (width, height) that open_image(..., draft=) decodes, when asked


def probe_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *, draft: int | None = None,
                name: str | None = None) -> ImageInfo:
    """Read only the header of ``source`` (a path or bytes): size, mode and format; cheap enough to run on every
    file up front. With ``draft``, ``decoded`` says the size :func:`open_image` with that ``draft`` decodes
    (smaller for a JPEG much larger than ``draft``), i.e. the pixels the decode will cost.

    Catches what needs no decoding: missing, empty, unreadable files, symlink loops, text or HTML saved
    as an image, unsupported formats, cut-short headers and decompression bombs. A file cut short in its
    pixel data passes; the full decode reports it later.

    >>> from PIL import Image
    >>> Image.new("RGB", (640, 480)).save("cat.jpg")
    >>> probe_image("cat.jpg")
    ImageInfo(width=640, height=480, mode='RGB', format='JPEG', decoded=None)
    >>> probe_image("cat.jpg", draft=64).decoded  # a JPEG decodes at 1/2, 1/4 or 1/8 of its size
    (160, 120)
    >>> probe_image(b"<html><body>Not found</body></html>", name="dog.jpg")
    Traceback (most recent call last):
    ...
    visiontrain.errors.ImageError: dog.jpg: not an image Pillow can read ... (it is an HTML/XML/SVG document); ...

    Raises:
        ImageError: as :func:`open_image` does, for everything found in the header.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        label = name or "<bytes>"
        if len(source) == 0:
            raise ImageError(label, "empty file (0 bytes)", _EMPTY_HINT)
        return _probe(io.BytesIO(source), label, max_pixels, draft)
    label = name or str(source)
    with _open_file(Path(source), label) as fp:
        return _probe(fp, label, max_pixels, draft)


def _probe(fp: io.IOBase, label: str, max_pixels: int, draft: int | None) -> ImageInfo:
    img = _decode(fp, label, max_pixels, None, header_only=True)
    info = ImageInfo(img.width, img.height, img.mode, img.format or "")
    if draft:
        _draft(img, draft)
        info = ImageInfo(info.width, info.height, info.mode, info.format, decoded=img.size)
    return info


def image_to_tensor(img: Image.Image, contiguous: bool = True) -> torch.Tensor:
    """A uint8 tensor [C, H, W] (C=1 for 'L', 3 for 'RGB') that owns its memory; contiguous unless asked not
    to be (then a CHW view of HWC memory, the layout torch's uint8 resize is fastest on)."""
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"expected an 'L' or 'RGB' image (use open_image), got mode {img.mode!r}")
    # np.array copies into a writable buffer: torch.from_numpy warns on Pillow's read-only arrays.
    tensor = torch.from_numpy(np.array(img, dtype=np.uint8))
    tensor = tensor.unsqueeze(0) if img.mode == "L" else tensor.permute(2, 0, 1)
    return tensor.contiguous() if contiguous else tensor


def item_to_tensor(image: object, channels: int, name: str) -> torch.Tensor:
    """What a user's ``Dataset`` returns as an image (PIL, tensor or array) as uint8 [channels, H, W].

    Float tensors/arrays are read as [0, 1] (what ``ToTensor`` makes); arrays are H×W or H×W×C.
    """
    if isinstance(image, Image.Image):
        return image_to_tensor(_normalize(image, channels, (255, 255, 255)))
    if isinstance(image, np.ndarray):
        array = image if image.ndim == 2 else np.moveaxis(image, -1, 0)
        image = torch.from_numpy(np.ascontiguousarray(array))
    if not isinstance(image, torch.Tensor) or image.dim() not in (2, 3):
        raise ImageError(name, f"the Dataset returned {type(image).__name__}, not an image",
                         "return a PIL image, a [C,H,W] tensor or an [H,W,C] array")
    x = image.detach().cpu()
    x = x.unsqueeze(0) if x.dim() == 2 else x
    if x.is_floating_point():
        x = (x * 255).round().clamp(0, 255)
    x = x.to(torch.uint8)
    if x.shape[0] == 4:  # RGBA tensors: keep the colour
        x = x[:3]
    if x.shape[0] not in (1, 3):
        raise ImageError(name, f"the Dataset returned a {x.shape[0]}-channel image", "return 1 or 3 channels")
    if x.shape[0] != channels:
        x = adapt_channels(x, channels)
    return x.contiguous()


def _open_file(path: Path, label: str) -> io.BufferedReader:
    """Open ``path`` for reading, turning each way it can fail into a clear ImageError."""
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(label, "is a directory, not an image file", "pass the path of an image file")
        if st.st_size == 0:
            raise ImageError(label, "empty file (0 bytes)", _EMPTY_HINT)
        return path.open("rb")
    except FileNotFoundError:
        raise ImageError(label, "file not found", "check the path and the working directory") from None
    except PermissionError:
        raise ImageError(label, "permission denied", "check the file's read permissions") from None
    except ValueError:  # os.stat refuses a NUL byte in a path (from a manifest, a list file)
        raise ImageError(label.replace("\0", "\\0"), "the path contains a NUL byte", "fix the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(label, "symlink loop", "fix or remove the symbolic link") from None
        raise ImageError(label, f"cannot read file ({exc.strerror or exc})", "check the disk/file") from None


def _decode(fp: io.IOBase, label: str, max_pixels: int, draft: int | None = None, *,
            header_only: bool = False) -> Image.Image:
    """Open with the allowed formats only, refuse bombs before decoding, load the first frame, apply EXIF.

    ``header_only`` returns the opened, not yet decoded image (for :func:`probe_image`).
    """
    with _PILLOW_STATE(max_pixels):
        try:
            try:
                img = Image.open(fp, formats=PIL_FORMATS)
            except Image.UnidentifiedImageError:
                raise ImageError(label, *_not_an_image(fp)) from None
            _check_size(img.size, label, max_pixels)  # header only: nothing big allocated yet
            if header_only:
                return img
            if draft:
                _draft(img, draft)
            img.load()
            _check_size(img.size, label, max_pixels)  # GIF frames may enlarge the canvas while loading
            trns = img.info.get("transparency")
            if img.format == "PNG" and isinstance(trns, tuple) and _png_is_16bit(fp):
                # 16-bit RGB PNGs decode to their high bytes, but the tRNS colour stays 16-bit: rescale it
                # (else Pillow matches its low bytes). Pixels equal in their high bytes become transparent.
                img.info["transparency"] = tuple(v >> 8 for v in trns)
            return ImageOps.exif_transpose(img)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            match = re.search(r"\((\d+) pixels\)", str(exc))
            pixels = f"{int(match.group(1)):,} pixels" if match else str(exc)
            reason = f"decompression bomb: {pixels} > limit {max_pixels:,}"
            raise ImageError(label, reason, _BOMB_HINT) from None
        except _DECODE_ERRORS as exc:
            raise ImageError(label, *_decode_failure(exc, fp)) from None


def _draft(img: Image.Image, draft: int) -> None:
    if img.format == "JPEG":
        img.draft(None, (draft, draft))  # DCT-domain downscale: both sides stay >= draft


class _PillowState:
    """Pillow's bomb guard and the warnings filters are process-wide, so decoding threads share one setting of
    them: the first thread in sets them, the last one out puts them back (each call setting and restoring its
    own would leak one call's settings when calls overlap). Only this bookkeeping is locked; the decoding runs in
    parallel: Pillow keeps a decoder's state in its image and releases the GIL while it decodes, so nothing else
    needs a lock (a server decodes several uploads at once). DataLoader workers are processes: unaffected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: collections.Counter[int] = collections.Counter()  # max_pixels of the decodes under way
        self._pillow_limit: int | None = None
        self._filters: warnings.catch_warnings | None = None

    @contextlib.contextmanager
    def __call__(self, max_pixels: int) -> Iterator[None]:
        with self._lock:
            if not self._limits:
                self._pillow_limit = Image.MAX_IMAGE_PIXELS
                self._filters = warnings.catch_warnings()
                self._filters.__enter__()
                warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on damaged TIFF tags: stray lines
                warnings.simplefilter("error", Image.DecompressionBombWarning)
            self._limits[max_pixels] += 1
            self._apply()
        try:
            yield
        finally:
            with self._lock:
                self._limits[max_pixels] -= 1
                self._limits += collections.Counter()  # drops the limits no decode uses any more
                if self._limits:
                    self._apply()
                else:
                    Image.MAX_IMAGE_PIXELS = self._pillow_limit
                    self._filters.__exit__(None, None, None)

    def _apply(self) -> None:
        # Pillow's own guard must not refuse what a caller explicitly allowed: it is raised to the largest limit
        # of the decodes under way (each decode checks its own limit itself, from the header).
        top, limit = max(self._limits), self._pillow_limit
        Image.MAX_IMAGE_PIXELS = top if limit is not None and top > limit else limit


_PILLOW_STATE = _PillowState()


def _not_an_image(fp: io.IOBase) -> tuple[str, str]:
    """Reason and hint for a file Pillow cannot identify, saying what it looks like (HTML named .jpg...)."""
    reason = f"not an image Pillow can read as {_FORMATS_TEXT}"
    try:
        fp.seek(0)
        raw = fp.read(512)
    except (OSError, ValueError):
        return reason, _NOT_IMAGE_HINT
    head = raw.lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")) or b"<html" in head:
        return f"{reason} (it is an HTML/XML/SVG document)", _NOT_IMAGE_HINT
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"{reason} (it looks like a text file)", _NOT_IMAGE_HINT
    for magic, fmt in _MAGIC.items():
        if raw.startswith(magic):  # the right signature but no usable header: cut short near the start
            return f"truncated image (starts like a {fmt} but its header is cut short or corrupt)", _CUT_HINT
    return reason, _NOT_IMAGE_HINT


def _riff_is_short(fp: io.IOBase) -> bool:
    """Whether a RIFF (WEBP) file is shorter than its header says: libwebp only reports a generic error."""
    try:
        fp.seek(0)
        head = fp.read(12)
        return head[:4] == b"RIFF" and fp.seek(0, io.SEEK_END) < struct.unpack("<I", head[4:8])[0] + 8
    except (OSError, ValueError, struct.error):
        return False


def _png_is_16bit(fp: io.IOBase) -> bool:
    """Read the IHDR bit depth (byte 24 of every PNG); Pillow does not expose it after decoding."""
    try:
        fp.seek(24)
        return fp.read(1) == b"\x10"
    except (OSError, ValueError):
        return False


def _check_size(size: tuple[int, int], label: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        reason = f"decompression bomb: {width}x{height} = {width * height:,} pixels > limit {max_pixels:,}"
        raise ImageError(label, reason, _BOMB_HINT)


def _decode_failure(exc: BaseException, fp: io.IOBase) -> tuple[str, str]:
    """Reason and hint for a decoder error: a cut-short file is by far the most common case."""
    text = str(exc)
    if isinstance(exc, EOFError) or re.search(r"truncat|broken data stream|premature end", text, re.I):
        return "truncated image", _CUT_HINT
    if _riff_is_short(fp):
        return "truncated image", _CUT_HINT
    return f"corrupt image data ({type(exc).__name__}: {text})", "re-save the file or remove it"


def _normalize(img: Image.Image, channels: int, background: tuple[int, int, int]) -> Image.Image:
    """Convert a loaded image of any Pillow mode to 'L' or 'RGB', blending transparency onto background."""
    if img.mode in _HIGH_BIT_MODES:
        img = _high_bit_to_8bit(img)
    if img.has_transparency_data:
        img = _composite(img, background)
    elif img.mode not in ("L", "RGB"):
        # '1' is gray; CMYK, P, YCbCr, LAB, HSV go through Pillow's colour conversions.
        img = img.convert("L" if img.mode == "1" else "RGB")
    target = "L" if channels == 1 else "RGB"
    # convert() always returns a new, detached image: nothing refers to the closed file afterwards.
    return img.convert(target)  # RGB->L: ITU-R 601 luma; L->RGB: gray replicated


def _composite(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Alpha-blend onto a solid background: out = round(c*a/255 + bg*(255-a)/255) per channel."""
    rgba = img.convert("RGBA")  # applies palette alpha and 'transparency' keys of P/L/RGB/1 images
    out = Image.new("RGB", img.size, background)
    out.paste(rgba, mask=rgba)  # an RGBA mask uses its alpha band
    return out


def _high_bit_to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float gray to 8 bits over the full range; never clamp at 255.

    16-bit modes map 0..65535 to 0..255 (32768 -> 128). Mode 'I' uses the same range when its values fit in
    it (Pillow's 16-bit TIFFs/PNGs), else its own min..max. Mode 'F' in 0..1 is scaled by 255, else like 'I'.
    """
    arr = np.asarray(img)
    # float32 holds every 16-bit value exactly, at half the memory of float64 for large scans.
    values = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = values * np.float32(255.0)
    elif img.mode.startswith("I;16") or (lo >= 0.0 and hi <= 65535.0):
        scaled = values * np.float32(255.0 / 65535.0)
    else:
        scaled = (values - lo) * np.float32(255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    trns = img.info.get("transparency")
    if isinstance(trns, int | float):
        # The transparent value is in the source's 16-bit scale: match it before scaling, not after.
        alpha = Image.fromarray(np.where(arr == trns, 0, 255).astype(np.uint8))
        return Image.merge("LA", (gray, alpha))
    return gray
