"""Every transform the notes name, by name and arguments; presets; errors that list what exists."""

from __future__ import annotations

import pytest
import torch

from visiontrain.data.transforms import (
    ALLOWED,
    PRESETS,
    TensorEval,
    build_transforms,
    check_specs,
    eval_specs,
    eval_transform,
    resolve,
    split_normalize,
    train_specs,
    tta_crops,
)
from visiontrain.errors import ConfigError

# One working spec per name: the arguments the notes use (padding, expand, policies...).
EXAMPLES = {
    "Resize": {"size": [20, 24]},
    "CenterCrop": {"size": 16},
    "RandomCrop": {"size": 32, "padding": 4},
    "RandomResizedCrop": {"size": [24, 24], "scale": [0.5, 1.0], "interpolation": "bicubic"},
    "FiveCrop": {"size": 16},
    "TenCrop": {"size": 16},
    "Pad": {"padding": [2, 3], "fill": 7},
    "RandomHorizontalFlip": {"p": 1.0},
    "RandomVerticalFlip": {"p": 1.0},
    "RandomRotation": {"degrees": 30, "expand": True},
    "RandomAffine": {"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1], "shear": 5},
    "RandomPerspective": {"distortion_scale": 0.3, "p": 1.0},
    "ColorJitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
    "Grayscale": {"num_output_channels": 3},
    "RandomGrayscale": {"p": 1.0},
    "GaussianBlur": {"kernel_size": 3, "sigma": [0.1, 2.0]},
    "RandomErasing": {"p": 1.0, "value": 0},
    "AutoAugment": {"policy": "cifar10"},
    "RandAugment": {"num_ops": 2, "magnitude": 9},
    "TrivialAugmentWide": {},
    "AugMix": {},
}


def _image() -> torch.Tensor:
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_examples_cover_every_allowed_name() -> None:
    assert set(EXAMPLES) == set(ALLOWED)


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_every_transform_builds_and_runs_on_uint8(name: str) -> None:
    out = build_transforms([{"name": name, **EXAMPLES[name]}])(_image())
    assert out.dtype == torch.uint8
    crops = tta_crops([{"name": name}])
    expected = {"Resize": (3, 20, 24), "CenterCrop": (3, 16, 16), "RandomResizedCrop": (3, 24, 24),
                "Pad": (3, 38, 36), "FiveCrop": (5, 3, 16, 16), "TenCrop": (10, 3, 16, 16)}
    if name == "RandomRotation":  # expand=True keeps the corners: the canvas grows
        assert out.shape[0] == 3 and out.shape[1] > 32 and out.shape[2] > 32
    else:
        assert tuple(out.shape) == expected.get(name, (3, 32, 32))
    assert crops == {"FiveCrop": 5, "TenCrop": 10}.get(name, 1)


def test_transforms_do_what_their_name_says() -> None:
    x = _image()
    assert torch.equal(build_transforms([{"name": "RandomHorizontalFlip", "p": 1.0}])(x), x.flip(-1))
    assert torch.equal(build_transforms([{"name": "RandomVerticalFlip", "p": 1.0}])(x), x.flip(-2))
    padded = build_transforms([{"name": "Pad", "padding": 2, "fill": 9}])(x)
    assert torch.equal(padded[:, 2:-2, 2:-2], x) and (padded[:, 0] == 9).all()
    gray = build_transforms([{"name": "Grayscale", "num_output_channels": 3}])(x)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    five = build_transforms([{"name": "FiveCrop", "size": 16}])(x)
    assert torch.equal(five[0], x[:, :16, :16]) and torch.equal(five[4], x[:, 8:24, 8:24])  # tl ... center
    erased = build_transforms([{"name": "RandomErasing", "p": 1.0, "value": 0}])(x)
    assert (erased == 0).sum() > (x == 0).sum()


def test_unknown_name_lists_what_exists() -> None:
    with pytest.raises(ConfigError) as info:
        build_transforms([{"name": "RandomFlip"}])
    message = str(info.value)
    assert "unknown transform 'RandomFlip'" in message and "RandomHorizontalFlip" in message and "\n" not in message


def test_bad_argument_names_the_arguments_it_takes() -> None:
    with pytest.raises(ConfigError, match="RandomCrop has no argument 'paddin'; it takes: size, padding"):
        build_transforms([{"name": "RandomCrop", "size": 32, "paddin": 4}])
    with pytest.raises(ConfigError, match="transform RandomRotation with"):
        build_transforms([{"name": "RandomRotation", "degrees": -5}])  # torchvision's own check
    with pytest.raises(ConfigError, match="interpolation 'cubic' is not one of nearest"):
        build_transforms([{"name": "Resize", "size": 8, "interpolation": "cubic"}])
    with pytest.raises(ConfigError, match="must be a mapping with a 'name'"):
        check_specs([{"size": 3}], "t")


def test_bare_names_and_notes_pipelines_are_accepted() -> None:
    specs = check_specs(["RandomHorizontalFlip", {"name": "ToTensor"},
                         {"name": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}], "t")
    rest, stats = split_normalize(specs)
    assert rest == [{"name": "RandomHorizontalFlip"}]  # ToTensor/Normalize happen on the device instead
    assert stats == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert build_transforms(specs)(_image()).dtype == torch.uint8
    with pytest.raises(ConfigError, match="Normalize"):
        split_normalize([{"name": "Normalize", "mean": [0.5], "std": [0.0]}])


def test_presets_and_defaults() -> None:
    assert set(PRESETS) == {"none", "digits", "cifar", "photos", "strong"}
    assert train_specs(32, "cifar", from_files=False, native=32) == [
        {"name": "Resize", "size": [32, 32]}, {"name": "RandomCrop", "size": 32, "padding": 4},
        {"name": "RandomHorizontalFlip"}]
    photos = train_specs(224, "photos", from_files=True)
    assert photos[0]["name"] == "RandomResizedCrop"
    assert eval_specs(224, from_files=True) == [{"name": "Resize", "size": 256},
                                                 {"name": "CenterCrop", "size": [224, 224]}]
    for name in PRESETS:  # every preset ends at the input size, from photos and from fixed-size images
        for from_files, native in ((True, None), (False, 28)):
            out = build_transforms(train_specs(28, name, from_files, native))(
                torch.zeros(3, 40, 57, dtype=torch.uint8) if from_files else torch.zeros(3, 28, 28, dtype=torch.uint8))
            assert tuple(out.shape) == (3, 28, 28), name


def test_resolve_config_choices() -> None:
    train, evaluation = resolve({}, 32, "cifar", False, 32)
    assert [s["name"] for s in train] == ["Resize", "RandomCrop", "RandomHorizontalFlip"]
    train, _ = resolve({"train": "none"}, 32, "cifar", False, 32)
    assert [s["name"] for s in train] == ["Resize"]
    train, evaluation = resolve({"train": [{"name": "ColorJitter", "brightness": 0.2}], "eval": ["CenterCrop"]},
                                32, "cifar", False, 32)
    assert train == [{"name": "ColorJitter", "brightness": 0.2}] and evaluation == [{"name": "CenterCrop"}]
    with pytest.raises(ConfigError, match="unknown key 'test'"):
        resolve({"test": []}, 32, "cifar", False, 32)
    with pytest.raises(ConfigError, match="unknown transform preset 'cifar11'"):
        resolve({"train": "cifar11"}, 32, "cifar", False, 32)
    with pytest.raises(ConfigError, match="eval must be a list"):
        resolve({"eval": "cifar"}, 32, "cifar", False, 32)


# The evaluation pipeline every run saves (Resize, or Resize + CenterCrop) is computed without torchvision for
# `predict` (data.transforms.TensorEval): it must equal torchvision's output bit for bit, for every shape it meets —
# up, down, the same size, the shorter side only, padding crops, gray and RGB, and the channels-last tensors
# images decode to.
_EVAL_CASES = [
    [{"name": "Resize", "size": [32, 32]}],
    [{"name": "Resize", "size": [28, 28]}],
    [{"name": "Resize", "size": 37}, {"name": "CenterCrop", "size": [32, 32]}],
    [{"name": "Resize", "size": [20]}, {"name": "CenterCrop", "size": 24}],
    [{"name": "Resize", "size": [17, 45], "antialias": True}],
    [{"name": "CenterCrop", "size": [31, 50]}],
    [],
]


@pytest.mark.parametrize("specs", _EVAL_CASES, ids=lambda s: "+".join(f"{x['name']}{x['size']}" for x in s) or "none")
def test_the_torch_only_evaluation_pipeline_equals_torchvisions(specs: list[dict]) -> None:
    fast, reference = eval_transform(specs), build_transforms(specs)
    assert isinstance(fast, TensorEval)
    gen = torch.Generator().manual_seed(0)
    for channels, height, width in [(3, 28, 28), (1, 28, 28), (3, 40, 25), (1, 19, 64), (3, 200, 150), (3, 9, 9)]:
        hwc = torch.randint(0, 256, (height, width, channels), dtype=torch.uint8, generator=gen)
        for image in (hwc.permute(2, 0, 1), hwc.permute(2, 0, 1).contiguous()):  # as decoded, and contiguous
            assert torch.equal(fast(image), reference(image)), (channels, height, width, image.stride())
        batch = torch.stack([hwc.permute(2, 0, 1)] * 3)  # the in-memory loaders resize whole batches
        assert torch.equal(fast(batch), reference(batch)), (channels, height, width, "batch")


@pytest.mark.parametrize("spec", [{"name": "Resize", "size": 32, "interpolation": "nearest"},
                                  {"name": "Resize", "size": 32, "antialias": False},
                                  {"name": "RandomCrop", "size": 32}])
def test_anything_else_is_built_by_torchvision(spec: dict) -> None:
    assert not isinstance(eval_transform([spec]), TensorEval)


def test_a_bad_size_is_still_one_config_error() -> None:
    with pytest.raises(ConfigError, match="transform Resize"):
        eval_transform([{"name": "Resize", "size": 32.5}])
