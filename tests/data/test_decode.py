"""Batch decoding on a device (data/decode.py, ``--decode``): tested here on the CPU, through the same function and
the same loader path a GPU run takes (there: nvJPEG); the GPU branch differs only in ``device``."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visiontrain.config import DataConfig
from visiontrain.data import FileLoader, build_data
from visiontrain.data.decode import batch_decoder_works, decode_batch
from visiontrain.data.images import image_to_tensor, open_image
from visiontrain.data.pack import pack
from visiontrain.data.pipeline import LoaderPlan, decode_device
from visiontrain.data.types import FileSplit
from visiontrain.errors import DataError, ImageError


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def _photo(width: int = 53, height: int = 37, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown: decode_jpeg does not apply this on a GPU
    return _encode(_photo(), "JPEG", exif=exif)


def _real_photos() -> dict[str, bytes]:
    """scikit-learn's two sample photos (camera JPEGs, 4:4:4) as shipped, and china.jpg re-encoded 4:2:0."""
    sklearn = pytest.importorskip("sklearn")
    folder = Path(sklearn.__file__).parent / "datasets" / "images"
    shipped = {f"{name} (as shipped)": (folder / name).read_bytes() for name in ("china.jpg", "flower.jpg")}
    with Image.open(folder / "china.jpg") as china:
        return {**shipped, "china.jpg (4:2:0, quality 90)": _encode(china.convert("RGB"), "JPEG", quality=90,
                                                                      subsampling=2)}


MEMBERS: dict[str, Callable[[], bytes]] = {
    "jpeg": lambda: _encode(_photo(), "JPEG", quality=90),
    "gray jpeg": lambda: _encode(_photo().convert("L"), "JPEG"),
    "progressive jpeg": lambda: _encode(_photo(seed=1), "JPEG", progressive=True),
    "cmyk jpeg": lambda: _encode(_photo().convert("CMYK"), "JPEG"),
    "exif-rotated jpeg": _rotated_jpeg,
    "png with alpha": lambda: _encode(_photo().convert("RGBA"), "PNG"),
    "webp": lambda: _encode(_photo(), "WEBP"),
}


@pytest.mark.parametrize("channels", [3, 1])
def test_every_member_decodes_as_the_guarded_decoder_does(channels: int) -> None:
    """One batch of mixed formats: each member equals open_image's pixels (the batch decoder is exact on the CPU)."""
    raws = [make() for make in MEMBERS.values()]
    out = decode_batch(raws, channels, "cpu")
    for name, raw, got in zip(MEMBERS, raws, out, strict=True):
        want = image_to_tensor(open_image(raw, channels))
        assert isinstance(got, torch.Tensor), (name, got)
        assert got.dtype == torch.uint8 and got.shape == want.shape, name
        # colour → gray: the same luma weights as Pillow's, rounded in float (off by 1 at most)
        assert int((got.int() - want.int()).abs().max()) <= (1 if channels == 1 else 0), name


def test_bad_members_are_named_errors_and_the_rest_decode() -> None:
    jpeg = _encode(_photo(), "JPEG")
    big = _encode(Image.new("RGB", (400, 300)), "JPEG")  # 120,000 pixels: refused from its header
    raws = [jpeg, b"<html><body>404</body></html>", jpeg[: len(jpeg) // 2], big, b"", torch.frombuffer(
        bytearray(jpeg), dtype=torch.uint8)]
    out = decode_batch(raws, 3, "cpu", max_pixels=100_000, names=[f"f{i}.jpg" for i in range(len(raws))])
    assert isinstance(out[0], torch.Tensor) and isinstance(out[5], torch.Tensor)  # bytes or a uint8 tensor
    assert torch.equal(out[0], out[5])
    reasons = {i: str(out[i]) for i in (1, 2, 3, 4)}
    assert all(isinstance(out[i], ImageError) for i in reasons)
    assert reasons[1].startswith("f1.jpg: not an image") and "HTML" in reasons[1]
    assert reasons[2].startswith("f2.jpg: truncated image")
    assert reasons[3].startswith("f3.jpg: decompression bomb: 400x300 = 120,000 pixels > limit 100,000")
    assert reasons[4].startswith("f4.jpg: empty file")


def test_decode_knob_picks_the_device() -> None:
    split = FileSplit([Path("a.jpg")], torch.zeros(1, dtype=torch.int64))
    plan = LoaderPlan([], True, 3, 32, torch.device("cpu"), False)
    assert decode_device(DataConfig(decode="auto"), plan, split) is None  # auto: only on CUDA
    assert decode_device(DataConfig(decode="cpu"), plan, split) is None
    assert decode_device(DataConfig(decode="gpu"), plan, split) == torch.device("cpu")  # forced: the batch path
    eval_plan = LoaderPlan([], False, 3, 32, torch.device("cpu"), False)
    assert decode_device(DataConfig(decode="gpu"), eval_plan, split) is None  # evaluation decodes as predict does
    assert batch_decoder_works("cpu")
    assert batch_decoder_works("cuda") == torch.cuda.is_available()


def _jpeg_folder(root: Path, per_class: int = 12) -> Path:
    for label, name in enumerate(["red", "green"]):
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(100 * label + i)
            pixels = rng.integers(0, 60, (40 + i, 48, 3), dtype=np.uint8)
            pixels[..., label] += 180
            Image.fromarray(pixels).save(root / "train" / name / f"{i}.jpg", quality=90)
    return root


def _batches(root: Path, decode: str, **kwargs: object) -> tuple[list, FileLoader]:
    cfg = DataConfig(**{"name": str(root), "decode": decode, "cache": "off", "batch_size": 8, "image_size": 32,
                        "val_split": 0.25, **kwargs})
    bundle = build_data(cfg, seed=3)
    loader = bundle.loaders["train"]
    assert isinstance(loader, FileLoader)
    loader.set_epoch(1)
    return list(loader), loader


def test_batch_decoding_gives_the_same_training_batches(tmp_path: Path) -> None:
    """Decoded per batch in the main process (the GPU path, here on the CPU) or per image in the workers: the same
    images, the same random augmentation (seeded per image), the same order."""
    root = _jpeg_folder(tmp_path)
    on_device, loader = _batches(root, "gpu")
    assert loader.dataset.batch_device == torch.device("cpu")
    per_image, other = _batches(root, "cpu")
    assert other.dataset.batch_device is None
    assert len(on_device) == len(per_image) == 3
    for (a, la), (b, lb) in zip(on_device, per_image, strict=True):
        assert a.dtype == torch.uint8 and a.shape == b.shape == (len(la), 3, 32, 32)
        assert torch.equal(la, lb) and torch.equal(a, b)


def test_a_file_that_fails_only_when_decoded_follows_bad_images(tmp_path: Path) -> None:
    root = _jpeg_folder(tmp_path)
    broken = root / "train" / "red" / "3.jpg"
    broken.write_bytes(broken.read_bytes()[:400])  # the header is whole: the scan passes it, decoding fails
    batches, loader = _batches(root, "gpu", bad_images="skip", val_split=0)
    assert sum(len(labels) for _, labels in batches) == 23
    assert [Path(p).name for p, _ in loader.bad_log.entries] == ["3.jpg"]
    assert "truncated" in loader.bad_log.entries[0][1]
    with pytest.raises(DataError, match=r"3\.jpg: truncated image"):
        _batches(root, "gpu", val_split=0)


def test_training_run_with_decode_forced(tmp_path: Path, main_cli) -> None:
    root = _jpeg_folder(tmp_path)
    result = main_cli("train", "--data", root, "--decode", "gpu", "--cache", "off", "--epochs", "1", "--image-size",
                      "32", "--batch-size", "8", "--no-plots", "--out", tmp_path / "runs")
    assert result.code == 0, result.err
    where = "cuda" if torch.cuda.is_available() else "cpu"  # `gpu` forced without one decodes on the CPU
    assert f"decoded per batch on {where}" in result.err + result.out and "(decode: gpu" in result.err + result.out


def test_decode_benchmark_reports_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/bench_decode.py, CPU-sized: one row per way, CPU and wall milliseconds per image."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import bench_decode
    finally:
        sys.path.pop(0)
    bench_decode.main(["--images", "4", "--batch", "2", "--size", "64x48", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == ["guarded per image (Pillow), CPU",
                                                          "decode_batch (probe + decode_jpeg) on cpu"]
    assert all(float(row.split("|")[2]) >= 0 and float(row.split("|")[3]) > 0 for row in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG)")
def test_on_the_gpu_batches_land_there_close_to_the_cpu_pixels(tmp_path: Path) -> None:
    """The GPU branch: nvJPEG's pixels within a few levels of libjpeg's (its IDCT differs), the fallbacks moved to
    the GPU too, and `decode: auto` picks it for a CUDA training split."""
    raws = [make() for make in MEMBERS.values()]
    on_gpu, on_cpu = decode_batch(raws, 3, "cuda"), decode_batch(raws, 3, "cpu")
    for name, a, b in zip(MEMBERS, on_gpu, on_cpu, strict=True):
        assert isinstance(a, torch.Tensor) and a.device.type == "cuda" and a.shape == b.shape, name
    # Pixels: on real photos. (MEMBERS are pixel noise: there nvJPEG's chroma upsampling of a 4:2:0 file differs from
    # libjpeg's by ~13 levels on average, seen on an H200; on a photo both upsample smooth colour alike.)
    photos = _real_photos()
    raw_photos = list(photos.values())
    for name, a, b in zip(photos, decode_batch(raw_photos, 3, "cuda"), decode_batch(raw_photos, 3, "cpu"), strict=True):
        assert a.device.type == "cuda" and a.shape == b.shape, name
        assert float((a.cpu().float() - b.float()).abs().mean()) < 2.0, name
    root = _jpeg_folder(tmp_path)
    bundle = build_data(DataConfig(name=str(root), cache="off", batch_size=8, image_size=32, val_split=0), seed=0,
                        pin_memory=True)
    loader = bundle.loaders["train"]
    assert isinstance(loader, FileLoader) and loader.dataset.batch_device == torch.device("cuda")
    images, _labels = next(iter(loader))
    assert images.device.type == "cuda" and images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, 32, 32)


def test_packed_shards_decode_per_batch_too(tmp_path: Path) -> None:
    """Shard members take the same batch path as folder files (the workers do one positioned read each): the same
    training batches as per-image decoding, and a damaged member is named by shard and member."""
    packed = tmp_path / "packed"
    pack(DataConfig(name=str(_jpeg_folder(tmp_path / "photos"))), 0, packed, shard_bytes=16384)
    on_device, loader = _batches(packed, "gpu")
    assert loader.dataset.batch_device == torch.device("cpu")
    per_image, other = _batches(packed, "cpu")
    assert other.dataset.batch_device is None and len(on_device) == len(per_image) >= 2
    for (a, la), (b, lb) in zip(on_device, per_image, strict=True):
        assert torch.equal(la, lb) and torch.equal(a, b)
    split = loader.dataset.split  # a member that this loader reads (the split's val part is held out of train)
    file, offset, size = split.files[int(split.shard[0])], int(split.offset[0]), int(split.size[0])
    with open(packed / file, "r+b") as fh:  # the member's bytes zeroed, its size kept
        fh.seek(offset)
        fh.write(b"\0" * size)
    damaged, loader = _batches(packed, "gpu", bad_images="skip")
    assert sum(len(labels) for _, labels in damaged) == sum(len(labels) for _, labels in per_image) - 1
    assert [name for name, _ in loader.bad_log.entries] == [split.name(0)]
    assert split.name(0).endswith(f"{file}:train_{int(split.member[0]):08d}.jpg")
