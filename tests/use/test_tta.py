"""Test-time augmentation: the views each mode makes, probability averaging, and its use in predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import visiontrain
from visiontrain.cli.use import TTA_NAMES
from visiontrain.data.synthetic import make_shapes
from visiontrain.errors import ConfigError
from visiontrain.use.tta import TTA_MODES, TTAModel, tta_logits


def _recording(views: list[torch.Tensor]):
    def forward(x: torch.Tensor) -> torch.Tensor:
        views.append(x.clone())
        return x[:, :, 0, :3].sum(dim=1)  # depends on position: views must differ to matter

    return forward


def test_the_cli_lists_every_mode() -> None:
    """The CLI names the modes without importing use.tta (torch): the two lists must stay the same."""
    assert list(TTA_NAMES) == list(TTA_MODES)


def test_flip_averages_the_probabilities_of_the_image_and_its_mirror() -> None:
    x = torch.randn(3, 2, 6, 6)
    seen: list[torch.Tensor] = []
    out = tta_logits(_recording(seen), x, "flip")
    (batch,) = seen  # one forward pass over both views
    assert torch.equal(batch, torch.cat([x, x.flip(-1)]))
    plain = torch.softmax(x[:, :, 0, :3].sum(dim=1), dim=1)
    mirrored = torch.softmax(x.flip(-1)[:, :, 0, :3].sum(dim=1), dim=1)
    assert torch.allclose(torch.softmax(out, dim=1), (plain + mirrored) / 2, atol=1e-6)


def test_five_crop_takes_corners_and_centre_of_an_enlarged_image() -> None:
    from torchvision.transforms.v2 import functional as F

    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16)
    views = TTA_MODES["five-crop"](x)
    assert len(views) == 5 and all(v.shape == x.shape for v in views)
    big = F.resize(x, [18, 18], antialias=True)  # 16 * 8/7 ≈ 18
    corners = [big[..., :16, :16], big[..., :16, 2:], big[..., 2:, :16], big[..., 2:, 2:], big[..., 1:17, 1:17]]
    for view, expected in zip(views, corners, strict=True):
        assert torch.equal(view, expected)


def test_none_is_the_model_itself_and_unknown_modes_are_refused() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64, 4))
    assert torch.equal(tta_logits(model, x, "none"), model(x))
    assert TTAModel(model, "flip")(x).shape == (2, 4)
    with pytest.raises(ConfigError, match="five-crop"):
        tta_logits(model, x, "rotate")


def test_multi_crop_batches_average_their_crops() -> None:
    crops = torch.randn(2, 5, 3, 4, 4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16, 3))
    expected = torch.stack([torch.softmax(model(crops[:, i]), dim=1) for i in range(5)]).mean(0)
    assert torch.allclose(torch.softmax(tta_logits(model, crops), dim=1), expected, atol=1e-6)


def test_predict_with_tta_keeps_the_right_class(tmp_path: Path, synthetic_run, main_cli) -> None:
    images, labels = make_shapes(8, 32, 3, seed=99)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    plain = visiontrain.predict(synthetic_run.dir, paths, top_k=4)
    flipped = visiontrain.predict(synthetic_run.dir, paths, top_k=4, tta="flip")
    classes = visiontrain.load(synthetic_run.dir).classes
    assert [r["predictions"][0]["label"] for r in flipped] == [classes[i] for i in labels.tolist()]
    assert plain != flipped  # the mirror view changed the probabilities
    for r in flipped:
        assert sum(p["probability"] for p in r["predictions"]) == pytest.approx(1.0, abs=1e-4)
    out = main_cli("predict", synthetic_run.dir, *paths[:2], "--tta", "five-crop", "--json")
    assert out.code == 0 and len(json.loads(out.out)) == 2
