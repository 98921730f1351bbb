"""export for deployment: preprocessing in the graph, int8/fp16 checked by accuracy, OpenVINO in its own runtime.

The default tier exports once (ONNX with the preprocessing, from a copy of the session's run whose sidecar
carries an extra key); every other export is a few seconds each and sits in the slow tier.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visiontrain
from visiontrain.use.export.runtime import META_KEY, load_exported
from visiontrain.use.export.write import ExportError, export

DOCS = Path(__file__).resolve().parents[2] / "docs" / "use.md"


@pytest.fixture(scope="module")
def run_with_extra_meta(synthetic_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's run, copied, its sidecar holding a key visiontrain does not write (yet): it must travel."""
    run = tmp_path_factory.mktemp("deploy") / "run"
    shutil.copytree(synthetic_run.dir, run)
    for sidecar in (run / "checkpoints").glob("*.json"):
        meta = json.loads(sidecar.read_text())
        meta["thresholds"] = [0.5, 0.25, 0.5, 0.75]
        sidecar.write_text(json.dumps(meta))
    return run


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, shape_pngs) -> tuple[list[Path], list[int]]:
    return shape_pngs(tmp_path_factory.mktemp("deploy-images"), 8, seed=77)


@pytest.fixture(scope="module")
def nhwc(run_with_extra_meta: Path) -> Path:
    return export(run_with_extra_meta, "onnx", run_with_extra_meta / "nhwc", with_preprocessing=True).path


def _session_probabilities(model: Path, paths: list[Path], layout: str) -> tuple[np.ndarray, dict]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths])  # N H W C
    if layout == "nchw":
        pixels = pixels.transpose(0, 3, 1, 2)
    meta = json.loads(session.get_modelmeta().custom_metadata_map[META_KEY])
    return session.run(None, {"image": np.ascontiguousarray(pixels)})[0], meta


def _predict_probabilities(run: Path, paths: list[Path]) -> np.ndarray:
    results = visiontrain.predict(run, paths, top_k=4)
    out = np.zeros((len(paths), 4))
    for row, r in zip(out, results, strict=True):
        for p in r["predictions"]:
            row[p["index"]] = p["probability"]
    return out


def _check_against_predict(model: Path, run: Path, paths: list[Path], layout: str) -> None:
    got, meta = _session_probabilities(model, paths, layout)
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["layout"] == layout
    assert got.shape == (len(paths), 4) and np.allclose(got.sum(1), 1, atol=1e-5)
    # predict rounds its probabilities to 6 places
    assert np.abs(got - _predict_probabilities(run, paths)).max() < 2e-6


def test_preprocessing_in_the_graph_gives_predicts_probabilities_on_real_files(nhwc, run_with_extra_meta,
                                                                              images) -> None:
    _check_against_predict(nhwc, run_with_extra_meta, images[0], "nhwc")


@pytest.mark.slow
def test_the_nchw_layout_too(run_with_extra_meta, images) -> None:
    model = export(run_with_extra_meta, "onnx", run_with_extra_meta / "nchw", with_preprocessing=True,
                   layout="nchw").path
    _check_against_predict(model, run_with_extra_meta, images[0], "nchw")


def test_the_metadata_keeps_classes_size_and_the_checkpoints_own_keys(nhwc, run_with_extra_meta) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(nhwc), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map[META_KEY])
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == [32, 32, 3] and not isinstance(inp.shape[0], int)
    assert meta["classes"] == visiontrain.load(run_with_extra_meta).classes
    assert meta["preprocessing"]["size"] == 32 and meta["input"]["shape"] == ["batch", 32, 32, 3]
    assert meta["thresholds"] == [0.5, 0.25, 0.5, 0.75]  # carried without export knowing the key
    assert "config" not in meta and "weights" not in meta  # what only describes the checkpoint file stays out


def test_predict_loads_an_export_with_the_preprocessing_in_its_graph(nhwc, run_with_extra_meta, images) -> None:
    paths, labels = images
    from_export = visiontrain.predict(nhwc, paths, top_k=4)
    assert np.abs(_predict_probabilities(run_with_extra_meta, paths) - np.array(
        [[next(p["probability"] for p in r["predictions"] if p["index"] == i) for i in range(4)]
         for r in from_export])).max() < 2e-6
    classes = load_exported(nhwc).classes
    assert [r["predictions"][0]["label"] for r in from_export] == [classes[i] for i in labels]


def test_the_client_in_the_docs_runs_on_the_export(nhwc, images, tmp_path: Path) -> None:
    """docs/use.md's client (onnxruntime, numpy, Pillow only) prints predict's label and probability."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"```python\n(# client\.py.*?)```", text, re.S)
    assert block, "docs/use.md lost its client.py block"
    (tmp_path / "client.py").write_text(block.group(1))
    paths = images[0][:3]
    done = subprocess.run([sys.executable, "client.py", str(nhwc), *map(str, paths)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = visiontrain.predict(nhwc, paths, top_k=1)
    assert done.stdout.splitlines() == [f"{r['path']}: {r['predictions'][0]['label']} "
                                        f"{r['predictions'][0]['probability']:.3f}" for r in expected]


@pytest.mark.parametrize("bad", [["--with-preprocessing", "--format", "torchscript"],
                                 ["--quantize", "fp16", "--format", "openvino"],
                                 ["--quantize", "int8", "--format", "pt2"]])
def test_options_a_format_cannot_take_are_one_line(bad: list[str], synthetic_run, main_cli, one_line_error) -> None:
    one_line_error(main_cli("export", synthetic_run.dir, *bad), bad[0])


# ---------------------------------------------------------------- int8, fp16, OpenVINO (slow: seconds each)


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "precision"), [("onnx", "int8"), ("onnx", "fp16"), ("openvino", "int8")])
def test_a_reduced_precision_export_reports_agreement_and_accuracy(fmt: str, precision: str, synthetic_run,
                                                                   tmp_path: Path, images) -> None:
    r = export(synthetic_run.dir, fmt, tmp_path, quantize=precision, with_preprocessing=fmt == "openvino")
    v = r.verification
    assert r.path.name == f"model.{precision}.{'onnx' if fmt == 'onnx' else 'openvino.xml'}"
    assert v["split"] == "test" and v["images"] == 400 and v["accuracy_fp32"] > 95
    assert v["top1_agreement"] >= 99 and v["accuracy_drop"] <= 1.0
    saved = load_exported(r.path)
    assert saved.meta["verification"] == v and saved.meta["precision"] == precision  # saved in the file
    paths, labels = images
    assert [p["predictions"][0]["label"] for p in visiontrain.predict(r.path, paths, top_k=1)] == \
        [saved.classes[i] for i in labels]
    fp32 = export(synthetic_run.dir, "onnx", tmp_path / "fp32").path
    if fmt == "onnx":
        assert r.path.stat().st_size < 0.75 * fp32.stat().st_size  # smaller: the point of it


@pytest.mark.slow
def test_an_impossibly_tight_accuracy_bound_refuses_the_int8_export(synthetic_run, tmp_path: Path, main_cli,
                                                                    one_line_error) -> None:
    line = one_line_error(main_cli("export", synthetic_run.dir, "--quantize", "int8", "--out", tmp_path,
                                   "--max-accuracy-drop", "-5", "--calibration-images", "64"),
                          "--max-accuracy-drop -5", "top-1 agreement", "not kept")
    assert re.search(r"loses -?[0-9.]+ points", line)
    assert not list(tmp_path.iterdir())  # neither the file nor the staging folder is left
    ok = main_cli("export", synthetic_run.dir, "--quantize", "int8", "--out", tmp_path, "--calibration-images", "64")
    assert ok.code == 0 and "top-1 agreement with fp32" in ok.out and "saved in its metadata" in ok.out


@pytest.mark.slow
def test_openvino_runs_in_the_openvino_runtime_like_pytorch(synthetic_run, tmp_path: Path) -> None:
    import openvino as ov

    r = export(synthetic_run.dir, "openvino", tmp_path)
    assert r.path.name == "model.openvino.xml" and r.path.with_suffix(".bin").is_file()
    compiled = ov.Core().compile_model(str(r.path), "CPU")
    loaded = visiontrain.load(synthetic_run.dir, device="cpu")
    for batch in (1, 9):
        x = loaded.prep.normalizer()(torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8))
        got = next(iter(compiled.create_infer_request().infer([x.numpy()]).values()))
        with torch.no_grad():
            assert torch.allclose(torch.from_numpy(got), loaded.model(x), atol=1e-4, rtol=1e-4)
    assert load_exported(r.path).format == "openvino"


@pytest.mark.slow
def test_a_failed_logit_check_keeps_nothing_of_a_staged_export(synthetic_run, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differs from the PyTorch model"):
        export(synthetic_run.dir, "openvino", tmp_path, tolerance=-1.0)
    assert not list(tmp_path.iterdir())
