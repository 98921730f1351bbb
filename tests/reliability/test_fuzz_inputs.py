"""Hypothesis fuzz of every input a user hands visiontrain: config files (random YAML text, keys and types),
``train`` flags (random argv), image bytes into ``predict`` (random and mutated real images, decompression
bombs) and manifests (random CSV/JSONL lines). Each ends in a result or in ONE line of a VisiontrainError
(exit code 2 from the CLI) — never another exception, never a traceback. Example counts are modest here; the
``slow`` variants run many more."""

from __future__ import annotations

import contextlib
import io
import json
import string
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import visiontrain.trainer.training
from visiontrain.checkpoint.format import save_checkpoint
from visiontrain.cli import main as cli_main
from visiontrain.config import ALIASES, RunConfig, keys, load_config, parse_override, read_yaml
from visiontrain.data.manifest import manifest_source
from visiontrain.data.synthetic import make_shapes
from visiontrain.errors import ConfigError, DataError, VisiontrainError
from visiontrain.models import ModelInput, create_model
from visiontrain.use.loading import load
from visiontrain.use.predict import predict

FAST, SLOW = 60, 1500
_SETTINGS = {"deadline": None, "database": None,
             "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much]}


def _one_line(exc: BaseException) -> None:
    assert isinstance(exc, VisiontrainError), f"{type(exc).__name__}: {exc}"
    assert "\n" not in str(exc) and str(exc).strip(), repr(str(exc))


# -- config files ----------------------------------------------------------------------------------------------

_KEYS = [*sorted(ALIASES), "data", "model", "optim", "train", "out", "name", "data.batch_size", "train.epochs",
         "model.args", "data.args.root", "optim.milestones", "train.class_weights", "nope", "train.nope",
         "data.transforms", "model.head", "data.item_timeout_s"]
_SCALARS = (st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
            | st.text(max_size=12) | st.sampled_from(["1e-3", "auto", "cpu", "synthetic", "none", ".inf", "-1"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), inner, max_size=3),
                       max_leaves=6)
_MAPPINGS = st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8) | st.integers(), _VALUES, max_size=5)
_YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=string.printable, max_size=200),
    _MAPPINGS.map(lambda m: yaml.safe_dump({str(k): v for k, v in m.items()}, allow_unicode=True)),
    st.sampled_from(["a: 2024-13-01", "[" * 3000, "epochs: !!python/object:os.system x", "- 1\n- 2",
                     "lr: 1e-3\nepochs: 2", "a: &x [*x]", "data: {batch_size: 0}", "\x00", "epochs: 1\n\tbad"]),
)


def _config_text(folder: Path, examples: int) -> None:
    @settings(max_examples=examples, **_SETTINGS)
    @given(text=_YAML_TEXT)
    def check(text: str) -> None:
        path = folder / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            assert isinstance(load_config(read_yaml(path), where=str(path)), RunConfig)
        except Exception as exc:  # the point: only a ConfigError may come out
            assert isinstance(exc, ConfigError), f"{type(exc).__name__}: {exc}"
            _one_line(exc)

    check()


def _config_mappings(examples: int) -> None:
    @settings(max_examples=examples, **_SETTINGS)
    @given(raw=_MAPPINGS, overrides=st.lists(st.text(max_size=30), max_size=3))
    def check(raw: dict, overrides: list[str]) -> None:
        try:
            cfg = load_config(raw)
            cfg.override(dict(parse_override(o) for o in overrides if "=" in o), where="--set")
        except Exception as exc:
            assert isinstance(exc, ConfigError), f"{type(exc).__name__}: {exc}"
            _one_line(exc)

    check()


def test_config_files_of_random_yaml_text(tmp_path: Path) -> None:
    _config_text(tmp_path, FAST)


def test_config_mappings_of_random_keys_and_types() -> None:
    _config_mappings(FAST)


@pytest.mark.slow
def test_config_fuzz_many(tmp_path: Path) -> None:
    _config_text(tmp_path, SLOW)
    _config_mappings(SLOW)


# -- CLI flags -------------------------------------------------------------------------------------------------

class _Reached(Exception):
    """The argv was valid: training would start here (the fuzz never trains)."""


_FLAGS = [leaf.flag for leaf in keys()] + ["--config", "--resume", "--set", "--lr-find", "--overwrite",
                                          "--quiet", "--bogus", "-x"]
_WORDS = (st.sampled_from(["abc", "-1", "0", "1e9", "nan", "inf", "", " ", "x=1", "=", "a.b=c", "1.5", "none",
                           "--", "-", "😀", "true", "[1, 2", "data.nope=1", "train.epochs=-3", "--epochs"])
          | st.text(max_size=10))


def _cli_flags(examples: int) -> None:
    @settings(max_examples=examples, **_SETTINGS)
    @given(argv=st.lists(st.one_of(st.sampled_from(_FLAGS), _WORDS), min_size=1, max_size=6))
    def check(argv: list[str]) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli_main(["train", *argv])
            except SystemExit as exc:
                code = exc.code
            except _Reached:
                return
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        assert code == 2, (argv, code, err.getvalue())
        assert len(lines) == 1 and lines[0].startswith("visiontrain: error: "), (argv, err.getvalue())

    check()


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def reached(*_args: Any, **_kw: Any) -> None:
        raise _Reached

    monkeypatch.setattr(visiontrain.trainer.training, "train", reached)
    monkeypatch.setattr(visiontrain.trainer.training, "find_lr", reached)


def test_train_flags_with_random_values_are_one_line_and_exit_2(no_training: None) -> None:
    _cli_flags(FAST)


@pytest.mark.parametrize("argv", [
    ["--epochs", "abc"], ["--epochs", "0"], ["--lr", "-1"], ["--batch-size", "1e9"], ["--set", "nope"],
    ["--set", "train.nope=1"], ["--data-arg", "=3"], ["--head", "x"], ["--image-size", "4"], ["--bogus"],
    ["--set", "data.item_timeout_s=-1"], ["--set", "data.max_pixels=2024-13-01"], ["--val-split", "1.5"],
])
def test_known_bad_flags(argv: list[str], no_training: None, main_cli, one_line_error) -> None:
    one_line_error(main_cli("train", *argv))


@pytest.mark.slow
def test_train_flags_many(no_training: None) -> None:
    _cli_flags(SLOW)


# -- image bytes into predict ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    """An untrained small_cnn checkpoint is enough: the fuzz is about decoding, not accuracy."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    meta = {"model": {"name": "small_cnn", "args": {}, "head": None}, "classes": ["a", "b", "c"],
            "preprocessing": {"channels": 3, "size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                              "eval_transforms": [{"name": "Resize", "size": [32, 32]}]}}
    return load(save_checkpoint(folder / "m", create_model("small_cnn", ModelInput(3, 32, 3)), meta))


def _real_images() -> list[bytes]:
    image = Image.fromarray(make_shapes(1, 24, 3, seed=1)[0][0].permute(1, 2, 0).numpy())
    out = []
    for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 90}), ("GIF", {}), ("BMP", {}), ("WEBP", {}),
                    ("TIFF", {}), ("PNG", {"mode": "RGBA"}), ("PNG", {"mode": "P"}), ("JPEG", {"mode": "CMYK"})):
        buf = io.BytesIO()
        image.convert(kw.pop("mode", "RGB")).save(buf, format=fmt, **kw)
        out.append(buf.getvalue())
    return out


REAL = _real_images()


@st.composite
def _image_bytes(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["random", "flip", "cut", "splice"]))
    if how == "random":
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(REAL)))
    if how == "cut":
        return bytes(data[:draw(st.integers(0, len(data)))])
    if how == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(max_size=64)) + bytes(data[at:])
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _predict_bytes(model, folder: Path, examples: int) -> None:
    @settings(max_examples=examples, **_SETTINGS)
    @given(data=_image_bytes(), suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".webp", ".tif"]))
    def check(data: bytes, suffix: str) -> None:
        path = folder / f"in{suffix}"
        path.write_bytes(data)
        (result,) = predict(model, [path], top_k=2)
        assert ("predictions" in result) != ("error" in result), result
        if "error" in result:
            assert "\n" not in result["error"]
        else:
            assert len(result["predictions"]) == 2

    check()


@pytest.mark.filterwarnings("error::UserWarning")  # no stray decoder warnings either: they would be stderr noise
def test_predict_on_random_and_mutated_images(model, tmp_path: Path) -> None:
    _predict_bytes(model, tmp_path, FAST * 2)


@pytest.mark.slow
@pytest.mark.filterwarnings("error::UserWarning")
def test_predict_fuzz_many(model, tmp_path: Path) -> None:
    _predict_bytes(model, tmp_path, SLOW * 2)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with a few bytes of data: cheap to make, huge to decode."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (2**31 - 1, 2), (9000, 9000)])
def test_decompression_bombs_are_refused_by_the_pixel_limit(model, tmp_path: Path, width: int, height: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(width, height))
    (result,) = predict(model, [path])
    assert "decompression bomb" in result["error"] and f"{width * height:,} pixels" in result["error"]


# -- manifests --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("manifest")
    images, _ = make_shapes(4, 16, 3, seed=0)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / f"{i}.png")
    return root


_CELLS = (st.sampled_from(["0.png", "1.png", "2.png", "3.png", "missing.png", "/etc/hostname", "../0.png",
                           "cat", "dog", "0", "1", "-1", "2.5", "nan", "train", "val", "test", "", "path", "label",
                           "value", "split", "class", "a,b", '"0.png"', "\x00", "0.png\x00"])
          | st.text(max_size=8))


@st.composite
def _manifest(draw: st.DrawFn) -> tuple[str, str]:
    suffix = draw(st.sampled_from([".csv", ".tsv", ".jsonl"]))
    rows = draw(st.lists(st.lists(_CELLS, min_size=0, max_size=4), max_size=8))
    if suffix == ".jsonl":
        keys = draw(st.lists(st.sampled_from(["path", "label", "value", "split", "class", "x"]), min_size=4,
                             max_size=4))
        lines = [json.dumps(dict(zip(keys, row, strict=False))) if draw(st.booleans()) else ",".join(row)
                 for row in rows]
    else:
        sep = "\t" if suffix == ".tsv" else ","
        header = [] if draw(st.booleans()) else [sep.join(draw(st.lists(_CELLS, min_size=1, max_size=4)))]
        lines = header + [sep.join(row) for row in rows]
    return suffix, "\n".join(lines)


def _manifests(root: Path, examples: int) -> None:
    from visiontrain.config import DataConfig

    @settings(max_examples=examples, **_SETTINGS)
    @given(manifest=_manifest(), policy=st.sampled_from(["error", "skip"]))
    def check(manifest: tuple[str, str], policy: str) -> None:
        suffix, text = manifest
        path = root / f"list{suffix}"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            source = manifest_source(path, DataConfig(name=str(path), bad_images=policy), 0)
        except Exception as exc:
            assert isinstance(exc, DataError), f"{type(exc).__name__}: {exc}"
            _one_line(exc)
            return
        assert len(source.splits["train"]) > 0

    check()


def test_manifests_of_random_lines(image_root: Path) -> None:
    _manifests(image_root, FAST * 2)


@pytest.mark.slow
def test_manifest_fuzz_many(image_root: Path) -> None:
    _manifests(image_root, SLOW * 2)
