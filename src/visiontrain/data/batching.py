"""The pieces every loader shares: the sample order of an epoch and its seeds, a rank's part of a global batch,
the bad-image log, and collation that carries a failed file's error instead of raising in a worker.

A file that fails to decode never crashes a worker: the worker returns a marker, the batch is collated without it
(:func:`collate_marked`), and the main process applies the ``bad_images`` policy (:class:`BadImageLog`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch

from visiontrain.errors import DataError
from visiontrain.text import utf8_safe

Batch = tuple[torch.Tensor, torch.Tensor]
EpochOrder = Callable[[int], torch.Tensor]  # epoch → the sample order of that epoch (all processes together)


def mix_seed(*parts: int) -> int:
    """A 62-bit seed from integers, stable across processes and Python runs (unlike ``hash``)."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of an epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def shard_part(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous part of a global batch of ``n`` (as even as possible; every rank's parts
    together are the whole batch, each sample exactly once)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def check_even_split(batch_size: int, world: int, drop_tail: bool) -> None:
    """Training batches must split evenly between the processes (evaluation's need not): one line when not."""
    if batch_size % world and drop_tail:
        raise DataError(f"batch size {batch_size} is not divisible by {world} processes; use a multiple of the "
                        "process count, or --batch-size-per-device")


def usable_samples(n: int, batch_size: int, world: int) -> int:
    """Samples used per epoch: with several processes a final global batch smaller than the process
    count is dropped, since a process with nothing to train on would stall the others."""
    tail = n % batch_size
    return n - tail if world > 1 and 0 < tail < world else n


class BadImageLog:
    """Images that could not be decoded, under a policy: ``error`` raises at once, ``skip`` records them."""

    def __init__(self, policy: str = "error", entries: list[tuple[str, str]] | None = None) -> None:
        self.policy = policy
        self.entries: list[tuple[str, str]] = list(entries or [])
        self._on_change: Callable[[], None] | None = None

    def add(self, path: str, message: str) -> None:
        """Record ``path`` (``message``: why, with or without the leading path) or raise, by the policy."""
        reason = message.removeprefix(f"{path}: ")
        if self.policy == "error":
            raise DataError(f"{path}: {reason} (found while decoding; --bad-images skip trains without it and lists "
                            "it in bad_images.txt)")
        if any(p == path for p, _ in self.entries):
            return
        self.entries.append((path, reason))
        if self._on_change is not None:
            self._on_change()

    def text(self) -> str:
        lines = [f"{utf8_safe(path)}\t{utf8_safe(reason)}" for path, reason in self.entries]
        return "".join(line + "\n" for line in lines)

    def on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = callback


def collate_marked(items: list[tuple[torch.Tensor, Any, int, str]]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor, list]:
    """Stack the good samples; return (images, labels, indices, [(index, error), ...])."""
    good = [item for item in items if not item[3]]
    bad = [(item[2], item[3]) for item in items if item[3]]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0), torch.empty(0, dtype=torch.int64), bad
    images = torch.stack([item[0] for item in good])
    labels = torch.stack([torch.as_tensor(item[1]) for item in good])
    return images, labels, torch.tensor([item[2] for item in good], dtype=torch.int64), bad


def collate_bytes(items: list[tuple[torch.Tensor, Any, int, str]]) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                               torch.Tensor, list]:
    """Like :func:`collate_marked` for encoded files (lengths differ): a list of byte tensors, not a stack."""
    good = [item for item in items if not item[3]]
    bad = [(item[2], item[3]) for item in items if item[3]]
    labels = torch.stack([torch.as_tensor(item[1]) for item in good]) if good else torch.empty(0)
    return [item[0] for item in good], labels, torch.tensor([item[2] for item in good], dtype=torch.int64), bad
