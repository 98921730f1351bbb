"""predict on real files written here: every awkward kind into 3- and 1-channel models, clean images of each
class predicted as that class, unreadable files reported without stopping the rest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

import visiontrain
from visiontrain.data.synthetic import SHAPES, make_shapes
from visiontrain.errors import DataError

HAS_WEBP = features.check("webp")


def _shape_rgb(seed: int = 5) -> np.ndarray:
    return make_shapes(1, 32, 3, seed=seed)[0][0].permute(1, 2, 0).numpy()


def _awkward_files(folder: Path) -> dict[str, Path]:
    """One file of every awkward kind, made from a synthetic shape so the content is a real image."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_shape_rgb())
    gray = rgb.convert("L")
    files: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **params: object) -> None:
        files[name] = folder / name
        image.save(files[name], **params)

    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    save("rgba.png", rgba)
    la = gray.convert("LA")
    la.putalpha(128)
    save("la.png", la)
    save("palette_transparent.png", rgb.convert("P"), transparency=0)
    wide = (np.asarray(gray, dtype=np.uint16) * 257).astype(np.uint16)
    save("gray16.png", Image.fromarray(wide))
    save("gray.jpg", gray, quality=95)
    save("palette.gif", rgb.convert("P"))
    save("image.bmp", rgb)
    if HAS_WEBP:
        save("image.webp", rgb, lossless=True)
    save("photo.jpg", rgb.resize((60, 40)), quality=90)  # an RGB photo, not square
    return files


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    files = _awkward_files(tmp_path_factory.mktemp("awkward"))
    assert Image.open(files["gray16.png"]).mode.startswith("I;16")
    assert Image.open(files["palette_transparent.png"]).info.get("transparency") == 0
    return files


@pytest.mark.parametrize("which", ["synthetic_run", "gray_run"])
def test_every_awkward_file_gets_a_prediction(awkward: dict[str, Path], which: str,
                                              request: pytest.FixtureRequest) -> None:
    run: visiontrain.Run = request.getfixturevalue(which)
    model = visiontrain.load(run.dir)
    assert model.prep.channels == (3 if which == "synthetic_run" else 1)
    results = visiontrain.predict(model, list(awkward.values()), top_k=2)
    assert [r["path"] for r in results] == [str(p) for p in awkward.values()]
    for r in results:
        assert "error" not in r, r
        assert len(r["predictions"]) == 2 and r["predictions"][0]["label"] in SHAPES


def test_clean_images_of_each_class_are_predicted_as_that_class(tmp_path: Path, synthetic_run) -> None:
    images, labels = make_shapes(24, 32, 3, seed=4242)  # a seed no split was made from
    paths = []
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        paths.append(tmp_path / f"{i:02d}_{SHAPES[label]}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    assert set(labels.tolist()) == set(range(len(SHAPES)))
    results = visiontrain.predict(synthetic_run.dir, paths, top_k=1)
    predicted = [r["predictions"][0]["label"] for r in results]
    assert predicted == [SHAPES[label] for label in labels.tolist()]


def test_gray_model_predicts_its_classes(tmp_path: Path, gray_run) -> None:
    images, labels = make_shapes(24, 32, 1, seed=4242)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(image[0].numpy()).save(paths[-1])
    results = visiontrain.predict(gray_run.dir, paths, top_k=1)
    right = sum(r["predictions"][0]["index"] == label for r, label in zip(results, labels.tolist(), strict=True))
    assert right >= 18  # a small model on 800 images: well above the 25% of chance


def test_schema_probabilities_and_top_k(synthetic_run, awkward: dict[str, Path]) -> None:
    path = awkward["image.bmp"]
    (full,) = visiontrain.predict(synthetic_run.dir, [path], top_k=10)  # more than there are classes
    preds = full["predictions"]
    assert len(preds) == len(SHAPES)
    assert sorted(p["index"] for p in preds) == list(range(len(SHAPES)))
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1, abs=1e-5)
    for k in (1, 3):
        (top,) = visiontrain.predict(synthetic_run.dir, path, top_k=k)
        assert top["predictions"] == preds[:k]


def test_folders_and_globs(tmp_path: Path, synthetic_run) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_shape_rgb(1)).save(folder / "a.png")
    Image.fromarray(_shape_rgb(2)).save(folder / "sub" / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"junk")
    results = visiontrain.predict(synthetic_run.dir, [folder])
    assert [Path(r["path"]).name for r in results] == ["a.png", "b.jpg"]
    results = visiontrain.predict(synthetic_run.dir, [str(folder / "**" / "*.jpg")])
    assert [Path(r["path"]).name for r in results] == ["b.jpg"]
    with pytest.raises(DataError, match="no file matches"):
        visiontrain.predict(synthetic_run.dir, [str(folder / "*.gif")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images to predict"):
        visiontrain.predict(synthetic_run.dir, [tmp_path / "empty"])


def _folder_with_a_bad_file(root: Path) -> tuple[Path, Path]:
    root.mkdir()
    for i in range(3):
        Image.fromarray(_shape_rgb(i)).save(root / f"good{i}.png")
    bad = root / "bad.png"
    bad.write_text("<html>not a png</html>")
    return root, bad


def test_one_unreadable_file_is_reported_and_the_rest_predicted(tmp_path: Path, synthetic_run, main_cli) -> None:
    folder, bad = _folder_with_a_bad_file(tmp_path / "mixed")
    results = visiontrain.predict(synthetic_run.dir, [folder])
    by_name = {Path(r["path"]).name: r for r in results}
    assert set(by_name) == {"bad.png", "good0.png", "good1.png", "good2.png"}
    assert set(by_name["bad.png"]) == {"path", "error"} and by_name["bad.png"]["error"]
    assert all("predictions" in by_name[f"good{i}.png"] for i in range(3))

    r = main_cli("predict", synthetic_run.dir, folder)
    assert r.code == 0
    assert f"visiontrain: skipped {bad}:" in r.err and "Traceback" not in r.err
    assert len([line for line in r.out.splitlines() if "good" in line]) == 3
    r = main_cli("predict", synthetic_run.dir, folder, "--json")
    assert r.code == 0 and len(json.loads(r.out)) == 4


def test_all_unreadable_exits_2(tmp_path: Path, synthetic_run, main_cli) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    r = main_cli("predict", synthetic_run.dir, tmp_path / "a.png", tmp_path / "missing.jpg")
    assert r.code == 2 and "Traceback" not in r.err
    assert r.err.count("visiontrain: skipped") == 2
    r = main_cli("predict", synthetic_run.dir, tmp_path / "nothing-*.png")
    assert r.code == 2 and r.err.startswith("visiontrain: error: no file matches")


def test_bad_device_is_one_line(synthetic_run, awkward, main_cli, one_line_error) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_line_error(main_cli("predict", synthetic_run.dir, awkward["image.bmp"], "--device", "cuda"),
                   "CUDA is not available")


@pytest.mark.parametrize("fixture", ["synthetic_run", "gray_run"])
def test_plain_pytorch_model_on_preprocess_predicts_as_predict_does(fixture: str, request, tmp_path: Path) -> None:
    """``loaded.model`` is a plain nn.Module: ``preprocess()`` (resize, crop, Normalize) makes its input from an
    image, so ``model(preprocess(img))`` gives predict's logits; the uint8 ``transform()`` alone would not."""
    run = request.getfixturevalue(fixture)
    loaded = visiontrain.load(run.dir, device="cpu")
    images, _ = make_shapes(8, 40, 3, seed=77)  # RGB photos of another size: preprocess fits channels and size
    pictures = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in images]
    x = torch.stack([loaded.preprocess()(p) for p in pictures])
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (loaded.prep.channels, 32, 32)
    with torch.no_grad():
        plain = loaded.model(x.contiguous(memory_format=torch.channels_last))
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (loaded.prep.mean, loaded.prep.std))
        unnormalized = loaded.model(x * std + mean)  # [0, 1] pixels, as a transform without Normalize gives
    paths = [tmp_path / f"{i}.png" for i in range(len(pictures))]
    for picture, path in zip(pictures, paths, strict=True):
        picture.save(path)
    results = visiontrain.predict(run.dir, paths, top_k=len(loaded.classes), device="cpu")
    torch.testing.assert_close(plain.softmax(1), torch.tensor([[c["probability"] for c in sorted(
        r["predictions"], key=lambda c: c["index"])] for r in results]), atol=1e-4, rtol=0)
    assert not torch.allclose(plain, unnormalized, atol=1e-3)
