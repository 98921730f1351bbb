"""Damaged and hostile checkpoint files: safetensors bytes crafted by hand (8-byte little-endian header length,
JSON header, data) with an oversized header, overlapping or out-of-range offsets, cut short, or with the wrong
dtype/shape for the model; sidecars that break the schema; and a hypothesis fuzz of real sidecars. Every
outcome is a CheckpointError naming the file (or a TrustError, when the edit makes the sidecar name code or pass
a non-plain builder argument), or a valid load — never another exception."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import visiontrain
from visiontrain.checkpoint.validate import DTYPE_BYTES, check_safetensors
from visiontrain.errors import CheckpointError, TrustError
from visiontrain.models.doctor import inspect_weights
from visiontrain.models.rebuild import read_model_weights


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = {"data": {"name": "synthetic", "args": {"train": 64, "val": 16, "test": 16}}, "epochs": 1,
           "batch_size": 32, "out": str(tmp_path_factory.mktemp("ck")), "name": "r"}
    return visiontrain.train(cfg, quiet=True).dir


@pytest.fixture
def ckpt(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the run's checkpoints folder, free to damage."""
    return Path(shutil.copytree(run_dir / "checkpoints", tmp_path / "checkpoints"))


def _blob(header: dict[str, Any] | bytes, data: bytes, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _t(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# name → (file bytes, what the error says)
CRAFTED: dict[str, tuple[bytes, str]] = {
    "oversized header": (_blob({"a": _t("F32", [2], 0, 8)}, bytes(8), length=2**40), "over the"),
    "header past the end": (_blob({"a": _t("F32", [2], 0, 8)}, bytes(8), length=10_000), "runs past the end"),
    "too short": (b"\x01\x02\x03", "too short"),
    "overlapping offsets": (_blob({"a": _t("F32", [2], 0, 8), "b": _t("F32", [2], 4, 12)}, bytes(12)), "overlaps"),
    "same offsets twice": (_blob({"a": _t("F32", [2], 0, 8), "b": _t("F32", [2], 0, 8)}, bytes(8)), "overlaps"),
    "offsets out of range": (_blob({"a": _t("F32", [4], 0, 16)}, bytes(8)), "cut short or padded"),
    "gap between tensors": (_blob({"a": _t("F32", [2], 8, 16)}, bytes(16)), "gap"),
    "trailing bytes": (_blob({"a": _t("F32", [2], 0, 8)}, bytes(12)), "cut short or padded"),
    "shape does not match bytes": (_blob({"a": _t("F32", [3], 0, 8)}, bytes(8)), "does not match"),
    "unknown dtype": (_blob({"a": _t("X99", [2], 0, 8)}, bytes(8)), "unsupported dtype"),
    "negative dimension": (_blob({"a": _t("F32", [-2], 0, 8)}, bytes(8)), "invalid shape"),
    "huge shape": (_blob({"a": _t("F32", [2**62, 4], 0, 8)}, bytes(8)), "invalid shape"),
    "reversed offsets": (_blob({"a": _t("F32", [0], 8, 0)}, bytes(8)), "invalid data offsets"),
    "header not JSON": (_blob(b"{not json}", b""), "not JSON"),
    "header a list": (_blob(b"[1, 2]", b""), "not a JSON object"),
    "non-string metadata": (_blob({"__metadata__": {"x": 1}, "a": _t("F32", [2], 0, 8)}, bytes(8)), "metadata"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_safetensors_are_refused_everywhere_naming_the_file(case: str, ckpt: Path, main_cli,
                                                                    one_line_error) -> None:
    blob, fragment = CRAFTED[case]
    weights = ckpt / "best.safetensors"
    weights.write_bytes(blob)
    # 1. visiontrain.load / predict: the sidecar vouches for these bytes (an attacker controls both files)
    _edit(ckpt / "best.json", lambda m: m["weights"].update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob)))
    message = _refused(lambda: visiontrain.load(ckpt / "best.json"), str(weights), fragment)
    assert message.count("not a valid safetensors file") == 1
    # 2. a bare .safetensors for --pretrained/--init-from/checkpoint inspect: no hash to check first (bytes that
    # do not start like a safetensors header are turned away by the format sniffing before that)
    fragment = fragment if blob[8:9] == b"{" else "not a safetensors file"
    _refused(lambda: read_model_weights(weights), str(weights), fragment)
    one_line_error(main_cli("checkpoint", "inspect", weights), str(weights), fragment)


def test_the_header_is_checked_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A declared 60 MB header in a 100-byte file is refused from the first 8 bytes: nothing big is read."""
    path = tmp_path / "w.safetensors"
    path.write_bytes(_blob({"a": _t("F32", [2], 0, 8)}, bytes(8), length=60 * 2**20))
    _refused(lambda: read_model_weights(path), "runs past the end")


def test_a_truncated_checkpoint_is_refused(ckpt: Path) -> None:
    weights = ckpt / "best.safetensors"
    data = weights.read_bytes()
    for cut in (0, 5, 8, 100, len(data) // 2, len(data) - 1):
        weights.write_bytes(data[:cut])
        _refused(lambda: visiontrain.load(ckpt / "best.json"), str(weights), "SHA-256 differs")  # the pair check
        _refused(lambda: read_model_weights(weights), str(weights), "safetensors file")


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda t, k: t.__setitem__(k, t[k].double()), "another dtype (e.g. "),
    (lambda t, k: t.__setitem__(k, t[k].half()), "another dtype"),
    (lambda t, k: t.__setitem__(k, t[k].flatten()[:-1]), "another shape"),
    (lambda t, k: t.pop(k), "missing"),
    (lambda t, k: t.__setitem__("extra.weight", torch.zeros(2)), "unexpected"),
], ids=["float64", "float16", "shape", "missing", "extra"])
def test_wrong_dtype_or_shape_for_the_model_is_refused(change: Callable, fragment: str, ckpt: Path) -> None:
    weights = ckpt / "best.safetensors"
    tensors = safetensors.torch.load_file(weights)
    change(tensors, sorted(k for k in tensors if k.endswith("weight"))[0])
    blob = safetensors.torch.save(tensors)
    weights.write_bytes(blob)
    _edit(ckpt / "best.json", lambda m: m["weights"].update(sha256=hashlib.sha256(blob).hexdigest()))
    _refused(lambda: visiontrain.load(ckpt / "best.json"), str(ckpt / "best.json"), "weights do not fit the model",
             fragment)


def test_class_count_must_equal_the_head_size(ckpt: Path) -> None:
    for change, n in ((lambda m: m["classes"].pop(), 3), (lambda m: m["classes"].extend(["a", "b"]), 6)):
        side = ckpt / "best.json"
        original = side.read_text()
        _edit(side, change)
        _refused(lambda: visiontrain.load(side), str(side), f"lists {n} classes", "has 4 outputs")  # noqa: B023
        side.write_text(original)


# field → (change, what the error names)
SCHEMA: dict[str, tuple[Callable[[dict], Any], str]] = {
    "classes not a list": (lambda m: m.update(classes="cats,dogs"), "'classes'"),
    "classes empty": (lambda m: m.update(classes=[]), "'classes'"),
    "class not a string": (lambda m: m["classes"].__setitem__(0, 7), "'classes'"),
    "too many classes": (lambda m: m.update(classes=[str(i) for i in range(100_001)]), "'classes'"),
    "class name too long": (lambda m: m["classes"].__setitem__(0, "x" * 5000), "'classes'"),
    "channels 2": (lambda m: m["preprocessing"].update(channels=2), "'preprocessing.channels'"),
    "channels true": (lambda m: m["preprocessing"].update(channels=True), "'preprocessing.channels'"),
    "size too small": (lambda m: m["preprocessing"].update(size=4), "'preprocessing.size'"),
    "size too large": (lambda m: m["preprocessing"].update(size=10**6), "'preprocessing.size'"),
    "size a string": (lambda m: m["preprocessing"].update(size="32"), "'preprocessing.size'"),
    "mean too short": (lambda m: m["preprocessing"]["mean"].pop(), "'preprocessing.mean'"),
    "mean NaN": (lambda m: m["preprocessing"]["mean"].__setitem__(0, float("nan")), "'preprocessing.mean'"),
    "std zero": (lambda m: m["preprocessing"]["std"].__setitem__(0, 0), "'preprocessing.std'"),
    "std negative": (lambda m: m["preprocessing"]["std"].__setitem__(0, -1.0), "'preprocessing.std'"),
    "std missing": (lambda m: m["preprocessing"].pop("std"), "'preprocessing.std'"),
    "eval transforms not specs": (lambda m: m["preprocessing"].update(eval_transforms=[1]),
                                  "'preprocessing.eval_transforms'"),
    "model name empty": (lambda m: m["model"].update(name=""), "'model.name'"),
    "model args a list": (lambda m: m["model"].update(args=[1]), "'model.args'"),
    "head of strings": (lambda m: m["model"].update(head=["wide"]), "'model.head'"),
    "head of zeros": (lambda m: m["model"].update(head=[0]), "'model.head'"),
    "weights file a number": (lambda m: m["weights"].update(file=3), "'weights.file'"),
    "sha256 not hex": (lambda m: m["weights"].update(sha256="zz"), "'weights.sha256'"),
    "byte count negative": (lambda m: m["weights"].update(bytes=-1), "'weights.bytes'"),
    "format version 0": (lambda m: m.update(format_version=0), "'format_version'"),
    "metrics a list": (lambda m: m.update(metrics=[1, 2]), "'metrics'"),
}


@pytest.mark.parametrize("case", list(SCHEMA))
def test_sidecar_schema_violations_name_the_file_and_field(case: str, ckpt: Path, main_cli, one_line_error) -> None:
    change, field = SCHEMA[case]
    _edit(ckpt / "best.json", change)
    _refused(lambda: visiontrain.load(ckpt / "best.json"), str(ckpt / "best.json"), field)
    one_line_error(main_cli("predict", ckpt / "best.json", ckpt / "x.png"), str(ckpt / "best.json"), field)


def test_a_valid_sidecar_passes_the_schema(ckpt: Path) -> None:
    loaded = visiontrain.load(ckpt / "best.json")
    assert loaded.classes == ["circle", "square", "triangle", "cross"]


# -- fuzz -------------------------------------------------------------------------------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4),
                     max_leaves=8)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON tree (the config section is left out: it is not read when loading)."""
    out = [prefix] if prefix else []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in items:
        if prefix == () and key == "config":
            continue
        out += _paths(value, (*prefix, key))
    return out


@st.composite
def _damaged(draw: st.DrawFn, original: bytes) -> bytes:
    """A real sidecar cut short, with bytes changed, or with one JSON value replaced or deleted."""
    how = draw(st.sampled_from(["truncate", "bytes", "value", "delete"]))
    if how == "truncate":
        return original[:draw(st.integers(0, len(original) - 1))]
    if how == "bytes":
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    meta = json.loads(original)
    path = draw(st.sampled_from(_paths(meta)))
    node = meta
    for key in path[:-1]:
        node = node[key]
    if how == "delete" and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = draw(_JSON)
    return json.dumps(meta).encode()


def _fuzz_sidecar(run_dir: Path, tmp_path_factory: pytest.TempPathFactory, examples: int) -> None:
    folder = Path(shutil.copytree(run_dir / "checkpoints", tmp_path_factory.mktemp("fuzz") / "checkpoints"))
    original = (folder / "best.json").read_bytes()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=_damaged(original))
    def check(data: bytes) -> None:
        (folder / "best.json").write_bytes(data)
        for attempt in (lambda: visiontrain.load(folder / "best.json"),
                        lambda: inspect_weights(folder / "best.safetensors", find_models=False)):
            try:
                attempt()
            except (CheckpointError, TrustError) as exc:
                assert "\n" not in str(exc) and "best." in str(exc)

    check()


def test_fuzzed_sidecars_give_a_checkpoint_error_or_a_valid_load(run_dir: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    _fuzz_sidecar(run_dir, tmp_path_factory, examples=60)


@pytest.mark.slow
def test_fuzzed_sidecars_many(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    _fuzz_sidecar(run_dir, tmp_path_factory, examples=2000)


@pytest.mark.slow
@given(blob=st.binary(min_size=0, max_size=300))
@settings(max_examples=3000, deadline=None, database=None)
def test_random_bytes_as_safetensors_never_escape_as_another_exception(blob: bytes, tmp_path_factory) -> None:
    path = tmp_path_factory.getbasetemp() / "random.safetensors"
    for data in (blob, struct.pack("<Q", len(blob)) + blob):
        path.write_bytes(data)
        try:
            read_model_weights(path)
        except CheckpointError as exc:
            assert "\n" not in str(exc)


_ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "X9"]),
    "shape": st.lists(st.integers(-1, 5), max_size=3),
    "data_offsets": st.lists(st.integers(-1, 48), max_size=3),
})
_HEADERS = st.dictionaries(st.text("abc", min_size=1, max_size=3), _ENTRY, max_size=4)


def _structured_headers(examples: int):
    @settings(max_examples=examples, deadline=None, database=None)
    @given(header=_HEADERS, data_len=st.integers(0, 64), sorted_offsets=st.booleans())
    def check(header: dict, data_len: int, sorted_offsets: bool) -> None:
        if sorted_offsets:  # often well-formed, so that the checks must also let valid files through
            end = 0
            for entry in header.values():
                size = max(0, math.prod(entry["shape"])) * DTYPE_BYTES.get(entry["dtype"], 1)
                entry["data_offsets"] = [end, end + size]
                end += size
            data_len = end if data_len % 2 else data_len
        blob = _blob(header, bytes(data_len))
        try:
            safetensors.torch.load(blob)
            library_ok = True
        except Exception:
            library_ok = False
        try:
            check_safetensors(blob, "w.safetensors")
            ours_ok = True
        except CheckpointError as exc:
            assert "w.safetensors: not a valid safetensors file (" in str(exc) and "\n" not in str(exc)
            ours_ok = False
        # the same verdict as the library: nothing valid is refused, nothing it refuses gets through
        assert ours_ok == library_ok, (header, data_len)

    check()


def test_structured_headers_get_the_same_verdict_as_the_safetensors_library() -> None:
    _structured_headers(300)


@pytest.mark.slow
def test_structured_headers_many() -> None:
    _structured_headers(5000)


# -- helpers ----------------------------------------------------------------------------------------------

def _edit(path: Path, change: Callable[[dict], Any]) -> None:
    meta = json.loads(path.read_text())
    meta = copy.deepcopy(meta)
    change(meta)
    path.write_text(json.dumps(meta))


def _refused(call: Callable[[], Any], *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message
