"""Tests for visiontrain.data.images: every file is made in tmp_path with Pillow or raw bytes (offline)."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, features

from visiontrain.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    PIL_FORMATS,
    image_to_tensor,
    is_image_file,
    open_image,
)
from visiontrain.errors import ImageError

HAS_WEBP = features.check("webp")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _raw_png(
    width: int, height: int, depth: int, color_type: int, rows: list[bytes], extra: bytes = b""
) -> bytes:
    """A PNG written by hand, for what Pillow cannot write (16-bit RGB) or must not decode (huge headers)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + row for row in rows))  # filter type 0 per row
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + extra
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _save(img: Image.Image, path: Path, **params: object) -> Path:
    img.save(path, **params)
    return path


def _peek(source: Path | io.BytesIO, attribute: str) -> object:
    """What Pillow itself reports for a file (mode, info, n_frames, format), closing it again."""
    with Image.open(source) as img:
        return getattr(img, attribute)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


def _photo() -> Image.Image:
    """A 48x32 RGB image with smooth content, so lossy formats can be checked with a tolerance."""
    y, x = np.mgrid[0:32, 0:48]
    arr = np.stack([x * 5, y * 7, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


# --- plain formats ------------------------------------------------------------------------------


def test_rgb_jpeg(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (20, 12), (200, 30, 60)), tmp_path / "a.jpg", quality=95)
    img = open_image(path)
    assert (img.mode, img.size) == ("RGB", (20, 12))
    assert np.abs(_pixels(img) - [200, 30, 60]).max() <= 3


def test_grayscale_jpeg(tmp_path: Path) -> None:
    path = _save(Image.new("L", (10, 10), 120), tmp_path / "g.jpeg")
    rgb, gray = open_image(path), open_image(path, channels=1)
    assert (rgb.mode, gray.mode) == ("RGB", "L")
    assert np.abs(_pixels(gray) - 120).max() <= 1
    assert (_pixels(rgb) == _pixels(gray)[..., None]).all()  # gray replicated into R, G and B


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (32, 16), (0, 0, 0, 0))  # no ink: white
    cmyk.paste((255, 0, 0, 0), (0, 0, 16, 16))  # full cyan ink on the left half
    path = _save(cmyk, tmp_path / "cmyk.jpg", quality=95)
    assert _peek(path, "mode") == "CMYK"
    img = open_image(path)
    assert img.mode == "RGB"
    assert np.abs(np.subtract(img.getpixel((8, 8)), (0, 255, 255))).max() <= 3
    assert np.abs(np.subtract(img.getpixel((24, 8)), (255, 255, 255))).max() <= 3


@pytest.mark.parametrize(
    ("suffix", "params"), [(".bmp", {}), (".tif", {}), (".png", {}), (".webp", {"lossless": True})]
)
def test_lossless_rgb_formats_exact(tmp_path: Path, suffix: str, params: dict) -> None:
    if suffix == ".webp" and not HAS_WEBP:
        pytest.skip("Pillow built without WEBP")
    src = _photo()
    img = open_image(_save(src, tmp_path / f"photo{suffix}", **params))
    assert (img.mode, img.size) == ("RGB", (48, 32))
    assert (_pixels(img) == _pixels(src)).all()


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_one_bit_image(tmp_path: Path, suffix: str) -> None:
    src = Image.new("1", (4, 2), 0)
    src.putpixel((1, 0), 1)
    src.putpixel((3, 1), 1)
    path = _save(src, tmp_path / f"bits{suffix}")
    assert _peek(path, "mode") == "1"
    expected = np.array([[0, 255, 0, 0], [0, 0, 0, 255]])
    assert (_pixels(open_image(path, channels=1)) == expected).all()
    assert (_pixels(open_image(path)) == expected[..., None]).all()


# --- transparency -------------------------------------------------------------------------------


def test_rgba_png_blends_onto_background(tmp_path: Path) -> None:
    src = Image.new("RGBA", (4, 1))
    src.putdata([(10, 20, 30, 0), (0, 0, 0, 128), (255, 0, 0, 128), (200, 100, 50, 255)])
    path = _save(src, tmp_path / "rgba.png")
    white = _pixels(open_image(path))[0]
    # round(c*a/255 + bg*(255-a)/255): 255*127/255 = 127, 255*128/255 + 255*127/255 = 255
    assert white.tolist() == [[255, 255, 255], [127, 127, 127], [255, 127, 127], [200, 100, 50]]
    black = _pixels(open_image(path, background=(0, 0, 0)))[0]
    assert black.tolist() == [[0, 0, 0], [0, 0, 0], [128, 0, 0], [200, 100, 50]]
    green = _pixels(open_image(path, background=(0, 255, 0)))[0]
    assert green[0].tolist() == [0, 255, 0]  # the colour under a fully transparent pixel never shows


def test_la_png(tmp_path: Path) -> None:
    src = Image.new("LA", (3, 1))
    src.putdata([(100, 0), (0, 128), (90, 255)])
    path = _save(src, tmp_path / "la.png")
    assert _peek(path, "mode") == "LA"
    assert _pixels(open_image(path, channels=1))[0].tolist() == [255, 127, 90]
    assert _pixels(open_image(path, background=(0, 0, 0)))[0].tolist() == [[0, 0, 0]] * 2 + [[90, 90, 90]]


def _palette_image(size: tuple[int, int] = (3, 1)) -> Image.Image:
    img = Image.new("P", size)
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 253)
    img.putdata([0, 1, 2][: size[0]] * size[1])
    return img


def test_palette_png_with_transparent_index(tmp_path: Path) -> None:
    path = _save(_palette_image(), tmp_path / "p.png", transparency=0)
    assert _peek(path, "info")["transparency"] == 0
    img = open_image(path, background=(7, 8, 9))
    assert _pixels(img)[0].tolist() == [[7, 8, 9], [0, 255, 0], [0, 0, 255]]


def test_palette_png_with_alpha_per_entry(tmp_path: Path) -> None:
    path = _save(_palette_image(), tmp_path / "p.png", transparency=b"\xff\x80\x00")
    assert _pixels(open_image(path))[0].tolist() == [[255, 0, 0], [127, 255, 127], [255, 255, 255]]


def test_palette_gif(tmp_path: Path) -> None:
    path = _save(_palette_image(), tmp_path / "p.gif")
    assert _peek(path, "mode") == "P"
    assert _pixels(open_image(path))[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    transparent = _save(_palette_image(), tmp_path / "t.gif", transparency=1)
    assert _pixels(open_image(transparent, background=(0, 0, 0)))[0].tolist() == [
        [255, 0, 0],
        [0, 0, 0],
        [0, 0, 255],
    ]


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert _peek(path, "n_frames") == 2
    img = open_image(path)
    assert (img.mode, img.size) == ("RGB", (8, 8))
    assert (_pixels(img) == [255, 0, 0]).all()


@pytest.mark.skipif(not HAS_WEBP, reason="Pillow built without WEBP")
def test_animated_webp_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((0, 255, 0), (255, 0, 255))]
    path = tmp_path / "anim.webp"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert _peek(path, "n_frames") == 2
    assert (_pixels(open_image(path)) == [0, 255, 0]).all()


# --- 16-bit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grayscale_scaled_not_clamped(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 32768, 65535, 300, 257 * 100]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / f"g16{suffix}")
    assert _peek(path, "mode") == "I;16"
    assert _pixels(open_image(path, channels=1))[0].tolist() == [0, 128, 255, 1, 100]
    assert _pixels(open_image(path))[0, 2].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I;16B", [0, 32768, 65535], [0, 128, 255]),  # big-endian 16-bit: never read as signed
        ("I", [0, 32768, 65535], [0, 128, 255]),  # 32-bit int holding 16-bit data: same scale
        ("I", [-1000, 0, 1000], [0, 128, 255]),  # outside 0..65535: its own min..max
        ("F", [0.0, 0.5, 1.0], [0, 128, 255]),  # float in 0..1
    ],
)
def test_high_bit_tiff_modes(mode: str, values: list[float], expected: list[int]) -> None:
    if mode == "I;16B":
        src = Image.frombytes(mode, (3, 1), struct.pack(">3H", *values))
    else:
        src = Image.fromarray(np.array([values], dtype=np.float32 if mode == "F" else np.int32))
    buf = io.BytesIO()
    src.save(buf, "TIFF")
    assert _peek(io.BytesIO(buf.getvalue()), "mode") == mode
    assert _pixels(open_image(buf.getvalue(), 1))[0].tolist() == expected


def test_16bit_grayscale_png_with_transparent_value() -> None:
    row = struct.pack(">3H", 0, 32768, 65535)
    data = _raw_png(3, 1, 16, 0, [row], _png_chunk(b"tRNS", struct.pack(">H", 32768)))
    # Pillow's own I;16 -> RGBA conversion clamps and misplaces the transparency here.
    assert _pixels(open_image(data, 1, background=(50, 50, 50)))[0].tolist() == [0, 50, 255]


def test_16bit_rgb_png() -> None:
    row = struct.pack(">6H", 0, 32768, 65535, 65535, 0, 0x00FF)
    data = _raw_png(2, 1, 16, 2, [row])
    assert _peek(io.BytesIO(data), "mode") == "RGB"  # Pillow already keeps the high bytes
    assert _pixels(open_image(data))[0].tolist() == [[0, 128, 255], [255, 0, 0]]


def test_16bit_rgba_png() -> None:
    row = struct.pack(">8H", 65535, 32768, 0, 65535, 0, 0, 0, 0)
    data = _raw_png(2, 1, 16, 6, [row])
    assert _pixels(open_image(data, background=(10, 20, 30)))[0].tolist() == [[255, 128, 0], [10, 20, 30]]


def test_16bit_rgb_png_transparent_colour_is_rescaled() -> None:
    row = struct.pack(">6H", 0x00FF, 0x00FF, 0x00FF, 0xFFFF, 0xFFFF, 0xFFFF)
    data = _raw_png(2, 1, 16, 2, [row], _png_chunk(b"tRNS", struct.pack(">3H", 0x00FF, 0x00FF, 0x00FF)))
    # The first pixel is the transparent colour; the white one must stay opaque (its low bytes match too).
    assert _pixels(open_image(data, background=(0, 255, 0)))[0].tolist() == [[0, 255, 0], [255, 255, 255]]


# --- EXIF orientation ---------------------------------------------------------------------------

_BASE = (np.arange(1, 7, dtype=np.uint8).reshape(2, 3) * 30).astype(np.uint8)  # 3 wide, 2 high, asymmetric
_ORIENTED = {
    1: _BASE,
    2: _BASE[:, ::-1],  # mirrored left-right
    3: _BASE[::-1, ::-1],  # rotated 180
    4: _BASE[::-1],  # mirrored top-bottom
    5: _BASE.T,  # transposed
    6: np.rot90(_BASE, -1),  # stored rotated: display turned 90 degrees clockwise
    7: np.rot90(_BASE, 2).T,  # transversed
    8: np.rot90(_BASE, 1),  # display turned 90 degrees counter-clockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation(tmp_path: Path, orientation: int, suffix: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    base = np.kron(_BASE, np.ones((8, 8), dtype=np.uint8)) if suffix == ".jpg" else _BASE  # JPEG: big blocks
    path = _save(Image.fromarray(base), tmp_path / f"o{orientation}{suffix}", exif=exif, quality=95)
    got = _pixels(open_image(path, channels=1))
    expected = _ORIENTED[orientation]
    if suffix == ".jpg":
        assert got.shape == (expected.shape[0] * 8, expected.shape[1] * 8)
        got = got[4::8, 4::8]  # block centres
        assert np.abs(got - expected).max() <= 4
    else:
        assert (got == expected).all()


# --- conversions, inputs, tensors ---------------------------------------------------------------


def test_channels_1_uses_itu_r_601_luma(tmp_path: Path) -> None:
    src = Image.new("RGB", (4, 1))
    src.putdata([(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 200, 30)])
    img = open_image(_save(src, tmp_path / "rgb.png"), channels=1)
    # L = 0.299 R + 0.587 G + 0.114 B, rounded
    assert img.mode == "L" and _pixels(img)[0].tolist() == [76, 150, 29, 124]


def test_channels_3_of_grayscale_replicates(tmp_path: Path) -> None:
    src = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    img = open_image(_save(src, tmp_path / "gray.png"))
    assert img.mode == "RGB" and _pixels(img)[0].tolist() == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]


def test_non_ascii_file_name(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (5, 3), (1, 2, 3)), tmp_path / "蚂蚁.png")
    img = open_image(path)
    assert img.size == (5, 3) and img.getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(ImageError, match=r"蜜蜂\.png: file not found"):
        open_image(tmp_path / "蜜蜂.png")


def test_bytes_input(tmp_path: Path) -> None:
    path = _save(_photo(), tmp_path / "photo.png")
    from_path, from_bytes = open_image(path), open_image(path.read_bytes())
    assert (_pixels(from_path) == _pixels(from_bytes)).all()
    assert open_image(bytearray(path.read_bytes()), 1).size == (48, 32)
    with pytest.raises(ImageError) as info:
        open_image(b"not an image")
    assert info.value.path == "<bytes>"
    with pytest.raises(ImageError, match=r"^upload\.jpg: empty file \(0 bytes\)"):
        open_image(b"", name="upload.jpg")


def test_result_is_detached_from_the_file(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (6, 4), (9, 9, 9)), tmp_path / "x.png")
    img = open_image(path)
    path.unlink()
    assert not isinstance(img, ImageFile.ImageFile)  # a plain, fully loaded image: no open file behind it
    assert img.copy().getpixel((5, 3)) == (9, 9, 9)


def test_image_to_tensor() -> None:
    rgb = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(2, 4, 3))
    tensor = image_to_tensor(rgb)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 2, 4) and tensor.is_contiguous()
    assert tensor[:, 1, 2].tolist() == [18, 19, 20]
    gray = image_to_tensor(Image.fromarray(np.array([[5, 6, 7]], dtype=np.uint8)))
    assert gray.shape == (1, 1, 3) and gray.is_contiguous() and gray.flatten().tolist() == [5, 6, 7]
    with pytest.raises(ValueError, match="'RGBA'"):
        image_to_tensor(Image.new("RGBA", (2, 2)))


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="channels"):
        open_image(b"x", channels=2)
    with pytest.raises(ValueError, match="background"):
        open_image(b"x", background=(0, 0, 256))


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "params"),
    [(".jpg", {}), (".png", {}), (".gif", {}), (".bmp", {}), (".tif", {}), (".webp", {})],
)
def test_truncated_file(tmp_path: Path, suffix: str, params: dict) -> None:
    if suffix == ".webp" and not HAS_WEBP:
        pytest.skip("Pillow built without WEBP")
    full = _save(_photo(), tmp_path / f"full{suffix}", **params).read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full[: len(full) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pillow's "Corrupt EXIF data" for the cut TIFF
        open_image(cut)
    assert info.value.reason == "truncated image"
    assert info.value.path == str(cut)


def test_header_cut_short(tmp_path: Path) -> None:
    full = _save(_photo(), tmp_path / "full.jpg").read_bytes()
    with pytest.raises(ImageError, match=r"truncated image \(starts like a JPEG"):
        open_image(full[:20])


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert info.value.reason == "empty file (0 bytes)"


def test_html_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_text("<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>\n")
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert info.value.reason.startswith("not an image Pillow can read as JPEG/PNG/BMP/WEBP/GIF/TIFF")
    assert "HTML" in info.value.reason


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "PCX"])
def test_formats_outside_the_allowed_list_are_refused(tmp_path: Path, fmt: str) -> None:
    path = _save(Image.new("RGB", (16, 16), (1, 2, 3)), tmp_path / "real_image.png", format=fmt)
    assert _peek(path, "format") == fmt  # a real image Pillow can read, just not one we allow
    with pytest.raises(ImageError, match="not an image Pillow can read as"):
        open_image(path)


def _no_decoding(self: ImageFile.ImageFile) -> None:
    raise AssertionError("pixel data must not be decoded for a bomb")


def test_decompression_bomb_header_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_raw_png(20000, 20000, 8, 0, [b"\0" * 20000]))  # declares 400M pixels, holds one row
    monkeypatch.setattr(ImageFile.ImageFile, "load", _no_decoding)
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert info.value.reason.startswith("decompression bomb: 400,000,000 pixels > limit 67,108,864")
    assert "--max-pixels" in str(info.value)
    assert before == Image.MAX_IMAGE_PIXELS


def test_max_pixels_is_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("L", (100, 100), 3), tmp_path / "big.png")
    with monkeypatch.context() as patch, pytest.raises(ImageError) as info:
        patch.setattr(ImageFile.ImageFile, "load", _no_decoding)  # refused from the header alone
        open_image(path, max_pixels=5000)
    assert info.value.reason == "decompression bomb: 100x100 = 10,000 pixels > limit 5,000"
    assert open_image(path, max_pixels=10_000).size == (100, 100)  # the limit itself is allowed
    assert DEFAULT_MAX_PIXELS >= 64 * 2**20


def test_pillow_guard_converted_and_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("L", (100, 100), 3), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # Pillow would warn (> 5000) for this file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match=r"decompression bomb: 10,000 pixels > limit 4,000"):
            open_image(path, max_pixels=4000)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    # A caller's larger limit wins over Pillow's global one (which would raise above 10,000) ...
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert open_image(path, max_pixels=20_000).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 2000  # ... and the global is put back


@pytest.mark.parametrize("kind", ["missing", "dangling_symlink"])
def test_missing_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "gone.jpg"
    if kind == "dangling_symlink":
        path.symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert (info.value.reason, info.value.path) == ("file not found", str(path))


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "cats.jpg"
    folder.mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        open_image(folder)


def test_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "a.png")
    assert info.value.reason == "symlink loop"


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "locked.png")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: simulate the refusal instead

        def refuse(self: Path, *args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "open", refuse)
    try:
        with pytest.raises(ImageError) as info:
            open_image(path)
        assert info.value.reason == "permission denied"
    finally:
        path.chmod(0o644)


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (".DS_Store", False),
        ("Thumbs.db", False),
        ("._foo.jpg", False),
        (".hidden.png", False),
        ("foo.JPG", True),
        ("foo.txt", False),
        ("a/b/cat.webp", True),
        ("a/__MACOSX/cat.png", False),
        ("蚂蚁.TIFF", True),
        ("noext", False),
    ],
)
def test_is_image_file(name: str, expected: bool) -> None:
    assert is_image_file(name) is expected
    assert is_image_file(Path(name)) is expected


def test_constants() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"} == IMAGE_EXTENSIONS
    assert set(PIL_FORMATS) == {"JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF"}


def test_threads_leave_pillow_globals_alone(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (40, 30), (4, 5, 6)), tmp_path / "t.png")
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)

    def work(i: int) -> tuple[int, int]:
        # Half the calls raise Pillow's guard temporarily (a limit above it), half stay below it.
        return open_image(path, max_pixels=(limit or 10**6) * 2 if i % 2 else 10**6).size

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(work, range(200))) == {(40, 30)}
    assert limit == Image.MAX_IMAGE_PIXELS
    assert list(warnings.filters) == filters
