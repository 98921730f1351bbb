"""A folder tree with every awkward file people really have, through folder scan, loaders and policies.

Single-file decoding is covered in test_images.py; here each case is checked at the dataset level: the
header scan, the error/skip policy, decode failures inside DataLoader workers (0 and 2), junk files, an
empty class folder, non-ASCII and undecodable names, a symlink loop, and pixels as the loader yields them.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.data import build_data
from visiontrain.data.loaders import FileLoader
from visiontrain.data.sources import load_source
from visiontrain.errors import DataError

SIDE = 16
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A valid PNG header declaring 100000 x 100000 pixels, with (almost) no data behind it."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
            + _png_chunk(b"IEND", b""))


def _corner(orientation: int) -> Image.Image:
    """16x16 black with a white 6x6 block top-left and a grey 4x4 block top-right: every flip/turn differs."""
    arr = np.zeros((SIDE, SIDE, 3), np.uint8)
    arr[:6, :6] = 255
    arr[:4, -4:] = 120
    img = Image.fromarray(arr)
    return img


def build_tree(root: Path) -> dict[str, object]:
    """The awkward tree; returns what the tests expect of it."""
    good, bad_header, junk = [], [], []
    cats, dogs = root / "cats", root / "dogs"
    for d in (cats, dogs, root / "empty", root / "猫", root / ".git", root / "__MACOSX" / "cats"):
        d.mkdir(parents=True)

    def save(img: Image.Image, path: Path, **kw: object) -> None:
        img.save(path, **kw)
        good.append(path)

    for i in range(6):
        save(Image.new("RGB", (SIDE, SIDE), (200, 10 * i, 30)), dogs / f"dog{i}.png")
    save(Image.new("RGBA", (SIDE, SIDE), (255, 0, 0, 0)), cats / "rgba.png")  # fully transparent: background
    save(Image.new("LA", (SIDE, SIDE), (50, 255)), cats / "la.png")
    pal = Image.new("P", (SIDE, SIDE), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    save(pal, cats / "palette.png", transparency=1)  # colour 1 transparent: white, not green
    save(Image.new("CMYK", (SIDE, SIDE), (0, 255, 255, 0)), cats / "cmyk.jpg", quality=95)
    save(Image.fromarray(np.full((SIDE, SIDE), 32768, np.uint16)), cats / "sixteen.png")
    save(Image.new("L", (SIDE, SIDE), 77), cats / "gray.jpg", quality=95)
    for k in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = k
        save(_corner(k), cats / f"exif{k}.png", exif=exif)
    frames = [Image.new("RGB", (SIDE, SIDE), (255, 0, 0)), Image.new("RGB", (SIDE, SIDE), (0, 0, 255))]
    frames[0].save(cats / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    good.append(cats / "anim.gif")
    save(Image.new("RGB", (SIDE, SIDE), (1, 2, 3)), root / "猫" / "été.png")
    # Bad, found by the header scan:
    for name, data in (("zero.jpg", b""), ("page.jpg", b"<!DOCTYPE html><html><body>403</body></html>"),
                       ("notes.jpg", b"just some text, not an image\n"), ("bomb.png", _bomb_png())):
        (cats / name).write_bytes(data)
        bad_header.append(cats / name)
    os.symlink(cats / "loop_b.jpg", cats / "loop_a.jpg")
    os.symlink(cats / "loop_a.jpg", cats / "loop_b.jpg")
    bad_header += [cats / "loop_a.jpg", cats / "loop_b.jpg"]
    undecodable = os.fsdecode(os.fsencode(str(dogs)) + b"/caf\xe9.jpg")  # latin-1 byte in a UTF-8 world
    Path(undecodable).write_bytes(b"")
    bad_header.append(Path(undecodable))
    # Bad only when decoded: a JPEG cut off in its pixel data (its header is fine).
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(cats / "truncated.jpg", quality=95)
    data = (cats / "truncated.jpg").read_bytes()
    (cats / "truncated.jpg").write_bytes(data[: len(data) // 2])
    # Junk that must be ignored, and a symlink loop of folders.
    for path in (cats / ".DS_Store", cats / "Thumbs.db", cats / ".hidden.jpg", cats / "._rgba.png",
                 cats / "readme.txt", root / ".git" / "x.png", root / "__MACOSX" / "cats" / "y.png"):
        path.write_bytes(b"junk")
        junk.append(path)
    os.symlink(cats, cats / "again")
    return {"good": good, "bad_header": bad_header, "truncated": cats / "truncated.jpg", "junk": junk}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("awkward")
    return root, build_tree(root)


def _cfg(root: Path, **kw: object) -> DataConfig:
    base: dict[str, object] = {"name": str(root), "val_split": 0.0, "batch_size": 8, "eval_batch_size": 8}
    return DataConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_error_policy_stops_up_front_naming_the_file(tree: tuple[Path, dict]) -> None:
    root, expect = tree
    with pytest.raises(DataError) as info:
        load_source(_cfg(root), 0)
    message = str(info.value)
    assert "\n" not in message and "--bad-images skip" in message
    assert any(message.startswith(f"{p}: ") for p in expect["bad_header"])
    assert f"(and {len(expect['bad_header']) - 1} more bad images)" in message


def test_scan_skips_bad_headers_ignores_junk_and_keeps_the_rest(tree: tuple[Path, dict]) -> None:
    root, expect = tree
    source = load_source(_cfg(root, bad_images="skip"), 0)
    assert source.classes == ["cats", "dogs", "猫"]  # empty, hidden and __MACOSX folders are not classes
    assert any("empty has no images" in n for n in source.notes)
    paths = set(source.splits["train"].paths)
    assert paths == set(expect["good"]) | {expect["truncated"]}  # junk ignored; the loop seen once
    assert {Path(p) for p, _ in source.bad_images} == set(expect["bad_header"])
    reasons = dict(source.bad_images)
    assert "empty file" in reasons[str(root / "cats" / "zero.jpg")]
    assert "HTML" in reasons[str(root / "cats" / "page.jpg")]
    assert "text file" in reasons[str(root / "cats" / "notes.jpg")]
    assert "decompression bomb" in reasons[str(root / "cats" / "bomb.png")]
    assert "symlink loop" in reasons[str(root / "cats" / "loop_a.jpg")]


@pytest.mark.parametrize("workers", [0, 2])
def test_decode_failure_in_workers_is_skipped_and_recorded(tree: tuple[Path, dict], tmp_path: Path,
                                                           workers: int) -> None:
    root, expect = tree
    bundle = build_data(_cfg(root, bad_images="skip", cache="off", workers=workers), 0, size=SIDE)
    loader = bundle.loaders["train"]
    assert isinstance(loader, FileLoader)
    bundle.write_artifacts(tmp_path)
    before = (tmp_path / "bad_images.txt").read_text(encoding="utf-8")
    seen = sum(len(labels) for _images, labels in loader)
    assert seen == len(expect["good"])  # everything but the truncated file, no crash mid-epoch
    after = (tmp_path / "bad_images.txt").read_text(encoding="utf-8")
    assert str(expect["truncated"]) not in before and f"{expect['truncated']}\ttruncated image" in after
    assert "caf\\xe9.jpg\tempty file" in after  # an undecodable name, written readably
    assert after.count("\n") == len(expect["bad_header"]) + 1


@pytest.mark.parametrize("workers", [0, 2])
def test_decode_failure_with_error_policy_is_one_line_in_the_main_process(tree: tuple[Path, dict],
                                                                         workers: int) -> None:
    root, expect = tree
    only_truncated = root.parent / f"truncated_only_{workers}"
    (only_truncated / "a").mkdir(parents=True)
    (only_truncated / "b").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(only_truncated / "a" / f"{i}.png")
        Image.new("RGB", (8, 8), (0, i, 0)).save(only_truncated / "b" / f"{i}.png")
    (only_truncated / "b" / "cut.jpg").write_bytes(Path(expect["truncated"]).read_bytes())
    bundle = build_data(_cfg(only_truncated, cache="off", workers=workers), 0, size=8)
    with pytest.raises(DataError) as info:
        for _batch in bundle.loaders["train"]:
            pass
    message = str(info.value)
    assert message.startswith(f"{only_truncated / 'b' / 'cut.jpg'}: truncated image")
    assert "\n" not in message and "Traceback" not in message and "--bad-images skip" in message


def test_in_memory_cache_records_decode_failures_too(tree: tuple[Path, dict]) -> None:
    root, expect = tree
    bundle = build_data(_cfg(root, bad_images="skip"), 0, size=SIDE)
    assert bundle.loaders["train"].images is not None
    assert len(bundle.loaders["train"].images) == len(expect["good"])
    assert str(expect["truncated"]) in bundle.artifacts()["bad_images.txt"]


def _decoded(root: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Each file as the (cached, evaluation) loader yields it, by file name."""
    bundle = build_data(_cfg(root, bad_images="skip", val_split=0.0, cache="off"), 0, size=SIDE, splits=("train",),
                        prep=None)
    split = bundle.source.splits["train"]
    out = {}
    dataset = bundle.loaders["train"].dataset  # type: ignore[union-attr]
    for i, path in enumerate(split.paths):
        if path.name in names:
            image, _label, _index, error = dataset.__class__(split, 3, None)[i]
            assert not error, error
            out[path.name] = image
    del dataset
    return out


def test_pixels_reach_the_loader_decoded_correctly(tree: tuple[Path, dict]) -> None:
    root, _ = tree
    names = ["rgba.png", "la.png", "palette.png", "cmyk.jpg", "sixteen.png", "gray.jpg", "anim.gif", "été.png"]
    images = _decoded(root, names + [f"exif{k}.png" for k in range(1, 9)])
    assert (images["rgba.png"] == 255).all()  # transparent red over the white background
    assert (images["la.png"] == 50).all()
    assert (images["palette.png"] == 255).all()  # the transparent palette entry, not its green
    cmyk = images["cmyk.jpg"].float().mean(dim=(1, 2))
    assert cmyk[0] > 200 and cmyk[1] < 40 and cmyk[2] < 40  # CMYK (0,255,255,0) is red
    assert (images["sixteen.png"] == 128).all()  # 32768/65535 of full scale, not clamped to 255
    assert (images["gray.jpg"].float() - 77).abs().max() <= 2 and images["gray.jpg"].shape[0] == 3
    assert images["anim.gif"][:, 0, 0].tolist() == [255, 0, 0]  # first frame
    assert images["été.png"][:, 0, 0].tolist() == [1, 2, 3]
    base = _corner(1)
    for k in range(1, 9):
        expected = base if k == 1 else base.transpose(_TRANSPOSE[k])
        want = torch.from_numpy(np.array(expected)).permute(2, 0, 1)
        assert torch.equal(images[f"exif{k}.png"], want), f"EXIF orientation {k}"


def test_training_runs_on_the_awkward_tree_with_skip(tree: tuple[Path, dict], tmp_path: Path) -> None:
    import visiontrain

    root, expect = tree
    run = visiontrain.train({"data": str(root), "bad_images": "skip", "epochs": 1, "image_size": SIDE,
                             "batch_size": 8, "out": str(tmp_path), "name": "awkward", "model": "small_cnn"},
                            quiet=True)
    listed = (run.dir / "bad_images.txt").read_text(encoding="utf-8")
    assert str(expect["truncated"]) in listed and str(root / "cats" / "bomb.png") in listed
    assert (run.dir / "split.json").is_file()


def test_parallel_header_scan_gives_the_same_result(tree: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    from visiontrain.data import scan

    root, _ = tree
    serial = load_source(_cfg(root, bad_images="skip"), 0)
    monkeypatch.setattr(scan, "_PARALLEL_FROM", 1)  # big folders scan in worker processes
    parallel = load_source(_cfg(root, bad_images="skip"), 0)
    assert parallel.splits["train"].paths == serial.splits["train"].paths
    assert parallel.splits["train"].infos == serial.splits["train"].infos
    assert parallel.bad_images == serial.bad_images
