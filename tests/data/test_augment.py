"""Batched augmentation: a different random draw per image, reproducible from the batch's generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visiontrain.data.augment import BatchPipeline, random_resized_crop


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _distinct_images(n: int, size: int = 8) -> torch.Tensor:
    """Every pixel of every image unique (values wrap in uint8, so keep n*size*size <= 256)."""
    return torch.arange(n * size * size, dtype=torch.uint8).view(n, 1, size, size)


def test_random_crop_is_a_crop_of_the_padded_image_with_per_image_offsets() -> None:
    x = _distinct_images(4).repeat(8, 1, 1, 1)  # 32 images, 4 distinct
    out = BatchPipeline([{"name": "RandomCrop", "size": 6, "padding": 1, "fill": 0}])(x, _gen())
    assert out.shape == (32, 1, 6, 6)
    padded = F.pad(x, (1, 1, 1, 1))
    offsets = []
    for image, source in zip(out, padded, strict=True):
        found = [(t, s) for t in range(5) for s in range(5) if torch.equal(source[:, t:t + 6, s:s + 6], image)]
        assert found, "output is not a crop of its padded input"
        offsets.append(found[0])
    assert len(set(offsets)) > 5  # not one crop for the whole batch (what v2 on a batch would do)


def test_flips_differ_per_image_and_keep_content() -> None:
    x = _distinct_images(64, size=2)
    out = BatchPipeline([{"name": "RandomHorizontalFlip"}])(x, _gen(1))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54
    always = BatchPipeline([{"name": "RandomVerticalFlip", "p": 1.0}])(x, _gen())
    assert torch.equal(always, x.flip(-2))


def test_same_generator_seed_same_batch() -> None:
    x = torch.randint(0, 256, (16, 3, 20, 20), dtype=torch.uint8, generator=_gen(3))
    specs = [{"name": "RandomCrop", "size": 16, "padding": 2}, {"name": "RandomHorizontalFlip"},
             {"name": "ColorJitter", "brightness": 0.5}, {"name": "RandomErasing", "p": 0.5}]
    pipe = BatchPipeline(specs)
    a, b, c = pipe(x, _gen(7)), pipe(x, _gen(7)), pipe(x, _gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (16, 3, 16, 16) and a.dtype == torch.uint8


def test_per_image_transforms_draw_independently() -> None:
    x = torch.full((12, 3, 16, 16), 128, dtype=torch.uint8)
    out = BatchPipeline([{"name": "ColorJitter", "brightness": 0.8}])(x, _gen())
    assert len({int(img.float().mean()) for img in out}) > 6


def test_batched_random_resized_crop_samples_valid_boxes() -> None:
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).repeat(20, 3, 1, 1).to(torch.uint8)
    op = random_resized_crop([4, 4], scale=(0.25, 1.0))
    out = op(x, _gen())
    assert out.shape == (20, 3, 4, 4) and out.dtype == torch.uint8
    # Rows increase downwards and columns rightwards in the source: any crop keeps that order.
    assert (out[:, :, 1:, :] >= out[:, :, :-1, :]).all() and (out[:, :, :, 1:] >= out[:, :, :, :-1]).all()
    assert len({tuple(o[0].flatten().tolist()) for o in out}) > 5
    whole = random_resized_crop([8, 8], scale=(1.0, 1.0), ratio=(1.0, 1.0))(x, _gen())
    assert torch.equal(whole, x)  # the full box at the same size is the image itself


def test_deterministic_steps_run_on_the_whole_batch_and_multi_crops_stack() -> None:
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=_gen())
    out = BatchPipeline([{"name": "Resize", "size": [24, 24]}, {"name": "TenCrop", "size": 20}])(x, _gen())
    assert out.shape == (3, 10, 3, 20, 20)
