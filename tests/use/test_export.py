"""export: ONNX / TorchScript / pt2 files that match PyTorch, carry their metadata and predict on their own."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

import visiontrain
from visiontrain.use.export.runtime import META_KEY, load_exported
from visiontrain.use.export.write import ExportError, export

FORMATS = ["onnx", "torchscript", "pt2"]


@pytest.fixture(scope="module")
def exports(synthetic_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exports")
    return {fmt: export(synthetic_run.dir, fmt, folder).path for fmt in FORMATS}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, shape_pngs) -> tuple[list[Path], list[int]]:
    return shape_pngs(tmp_path_factory.mktemp("export-images"), 6, seed=321)


def test_onnx_runs_in_onnxruntime_like_pytorch_at_any_batch_size(exports, synthetic_run) -> None:
    import onnxruntime as ort

    loaded = visiontrain.load(synthetic_run.dir, device="cpu")
    session = ort.InferenceSession(str(exports["onnx"]), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.shape[1:] == [3, 32, 32] and not isinstance(inp.shape[0], int)
    meta = json.loads(session.get_modelmeta().custom_metadata_map[META_KEY])
    assert meta["classes"] == loaded.classes and meta["preprocessing"] == json.loads(json.dumps(loaded.prep.to_dict()))
    for batch in (1, 7, 33):  # none of them the batch size it was traced at
        x = loaded.prep.normalizer()(torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8))
        (got,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            expected = loaded.model(x)
        assert got.shape == (batch, 4)
        assert torch.allclose(torch.from_numpy(got), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_predicts_alone_like_the_checkpoint(fmt: str, exports, images, synthetic_run) -> None:
    paths, labels = images
    model = load_exported(exports[fmt], trust_code=True)  # a .pt2 loads only when trusted (test_export_safety)
    assert model.format == fmt and model.classes == visiontrain.load(synthetic_run.dir).classes
    from_checkpoint = visiontrain.predict(synthetic_run.dir, paths, top_k=4)
    from_export = visiontrain.predict(exports[fmt], paths, top_k=4, trust_code=True)
    for a, b in zip(from_checkpoint, from_export, strict=True):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert [p["probability"] for p in a["predictions"]] == pytest.approx(
            [p["probability"] for p in b["predictions"]], abs=1e-5)
    assert [r["predictions"][0]["label"] for r in from_export] == [model.classes[i] for i in labels]


def test_export_cli_prints_the_verified_difference(tmp_path: Path, synthetic_run, main_cli) -> None:
    r = main_cli("export", synthetic_run.dir, "--format", "torchscript", "--out", tmp_path / "m.torchscript.pt")
    assert r.code == 0, r.err
    diff = float(re.search(r"max abs difference ([0-9.e+-]+)", r.out).group(1))
    assert 0 <= diff <= 1e-3
    assert (tmp_path / "m.torchscript.pt").is_file()


def test_predict_cli_with_onnx_matches_the_checkpoint(exports, images, synthetic_run, main_cli) -> None:
    paths, _ = images
    a = main_cli("predict", synthetic_run.dir, *paths, "--json", "--top-k", "1")
    b = main_cli("predict", exports["onnx"], *paths, "--json", "--top-k", "1")
    assert a.code == b.code == 0
    labels = [[p["label"] for p in r["predictions"]] for r in json.loads(a.out)]
    assert labels == [[p["label"] for p in r["predictions"]] for r in json.loads(b.out)]


def test_an_export_beyond_tolerance_is_refused_and_removed(tmp_path: Path, synthetic_run) -> None:
    with pytest.raises(ExportError, match="differs from the PyTorch model"):
        export(synthetic_run.dir, "pt2", tmp_path, tolerance=-1.0)
    assert not (tmp_path / "model.pt2").exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated; this test makes a plain file with it
def test_files_without_visiontrain_metadata_are_refused(tmp_path: Path, main_cli, one_line_error) -> None:
    plain = tmp_path / "plain.torchscript.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    one_line_error(main_cli("predict", plain, tmp_path / "x.png"), "no visiontrain metadata")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    one_line_error(main_cli("predict", broken, tmp_path / "x.png"), "onnxruntime cannot load it")


@pytest.mark.parametrize("opset", ["1", "6", "24", "0", "-3"])
def test_an_opset_the_exporter_cannot_write_is_refused_before_exporting(opset: str, tmp_path: Path, synthetic_run,
                                                                       main_cli, one_line_error) -> None:
    from visiontrain.use.export.files import onnx_opsets

    low, high = onnx_opsets()
    assert low <= 18 <= high  # torch 2.14: 7 to 23 (torch.onnx._constants); 18 is what it writes natively
    one_line_error(main_cli("export", synthetic_run.dir, "--format", "onnx", "--opset", opset, "--out", tmp_path),
                   f"--opset {opset}", f"{low} to {high}")
    assert not any(tmp_path.iterdir())


def test_an_opset_the_exporter_silently_replaced_is_refused(tmp_path: Path, synthetic_run, main_cli,
                                                            one_line_error) -> None:
    import onnx

    # torch cannot convert this model down to opset 7 and writes its own 18 instead, saying so only in a log
    one_line_error(main_cli("export", synthetic_run.dir, "--format", "onnx", "--opset", "7", "--out", tmp_path),
                   "at opset 7 (it wrote opset 18)")
    assert not any(tmp_path.iterdir())
    r = main_cli("export", synthetic_run.dir, "--format", "onnx", "--opset", "17", "--out", tmp_path)  # converts
    assert r.code == 0 and "Traceback" not in r.err, r.err
    assert {o.domain: o.version for o in onnx.load(str(tmp_path / "model.onnx")).opset_import}[""] == 17


@pytest.mark.parametrize("missing", [("onnx",), ("onnxscript", "onnxruntime")])
def test_the_default_format_without_the_onnx_extra_is_one_line_naming_it(missing: tuple[str, ...], synthetic_run,
                                                                          main_cli, one_line_error,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The default install has no onnx: `visiontrain export RUN` says what to install, before any work."""
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: imports and find_spec fail
    line = one_line_error(main_cli("export", synthetic_run.dir), "ONNX export (export's default format) needs the "
                          "onnx extra", "pip install 'visiontrain[onnx]'", "--format torchscript")
    assert f"({', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing)" in line
