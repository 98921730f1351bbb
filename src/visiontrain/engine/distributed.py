"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

``torchrun --nproc_per_node N -m visiontrain train …`` sets RANK/WORLD_SIZE/LOCAL_RANK; :func:`setup`
joins the process group (nccl on CUDA, gloo on the CPU) with a timeout, so a rank that dies ends the job
instead of hanging it. Each global batch (the ``--batch-size`` the user set) is cut into one equal slice
per rank; gradients are averaged by DDP with each rank's loss weighted by its share of the batch, so the
update equals the single-process update on the same global batch, uneven last batch included.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from visiontrain.config import RunConfig
from visiontrain.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def reducer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Sums a tensor over ranks (identity for one process): exact for counts and float64 sums."""
        return (lambda t: all_sum(t, self)) if self.enabled else (lambda t: t)

    def gatherer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Concatenates every rank's rows (identity for one process): multi-label AP needs every score."""
        return (lambda t: all_cat(t, self)) if self.enabled else (lambda t: t)

    def sync_gradients(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` on accumulation steps that do not end a cycle: one all-reduce per update."""
        if self.enabled and not sync and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()


SINGLE = Dist()


def setup(device: torch.device, timeout_s: float = 600.0) -> tuple[Dist, torch.device]:
    """Join the process group when launched by torchrun; a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"rank {rank} wants GPU {local} but this machine has {torch.cuda.device_count()}; "
                              "use --nproc_per_node ≤ the GPU count")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        # DDP imports torch._dynamo; imported after the process group exists, it keeps references to the group that
        # destroy_process_group() cannot drop (torch 2.14), so gloo's worker threads outlive teardown and one that
        # releases a tensor while the interpreter shuts down aborts the process ("terminate called without an
        # active exception", exit -6, ~1 run in 10 on a busy host). Imported first, teardown ends the group.
        importlib.import_module("torch._dynamo")
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank, world, local), device


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, d: Dist, device: torch.device, sync_bn: bool) -> nn.Module:
    if not d.enabled:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_buffers(model: nn.Module, d: Dist) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank. Each rank's last training forward moved
    its own copy with its own batch, so without this the ranks would validate slightly different models, and
    none of them exactly the one rank 0 saves. (Training is unchanged: DDP broadcasts them at every forward.)"""
    if d.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def all_sum(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over ranks in place (exact for integer counts and float64 sums)."""
    if d.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_cat(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Every rank's rows of ``tensor``, rank by rank (ranks may hold different row counts)."""
    if not d.enabled:
        return tensor
    count = torch.tensor([len(tensor)], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(d.world)]
    dist.all_gather(counts, count)
    most = int(max(int(c) for c in counts))
    padded = torch.zeros((most, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[:len(tensor)] = tensor
    parts = [torch.zeros_like(padded) for _ in range(d.world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(c)] for part, c in zip(parts, counts, strict=True)])


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank when it is true on any: keeps stop decisions (Ctrl-C) in step."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_text(text: str, d: Dist, device: torch.device) -> str:
    """Rank 0's string on every rank (e.g. the run folder it created)."""
    if not d.enabled:
        return text
    # As bytes in a tensor, not broadcast_object_list: nothing crosses processes as a pickle.
    data = torch.tensor(list(text.encode("utf-8")) if d.main else [], dtype=torch.uint8, device=device)
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buf = data if d.main else torch.zeros(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode("utf-8")


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def effective_config(cfg: RunConfig, d: Dist) -> RunConfig:
    """The config as this job runs it: the global batch and learning rate for ``d.world`` processes.

    Saved as the run's config.yaml, so a resume (with any process count) reads the same global batch."""
    if not d.enabled and not cfg.train.batch_size_per_device:
        return cfg
    batch = (cfg.train.batch_size_per_device or 0) * d.world or cfg.data.batch_size
    if d.enabled and batch % d.world:
        raise ConfigError(f"--batch-size {batch} is not divisible by {d.world} processes; use a multiple of the "
                          "process count, or --batch-size-per-device")
    lr = cfg.optim.lr * d.world if cfg.train.scale_lr else cfg.optim.lr
    return cfg.override({"data.batch_size": batch, "train.batch_size_per_device": None, "optim.lr": lr,
                         "train.scale_lr": False})


def launch(nproc: int, argv: list[str]) -> int:
    """``visiontrain train --gpus N …``: run the same command under torchrun on this machine."""
    if nproc > 1 and torch.cuda.device_count() < nproc:
        raise ConfigError(f"--gpus {nproc} but this machine has {torch.cuda.device_count()} CUDA devices; "
                          "for CPU processes run torchrun yourself (see docs/distributed.md)")
    from torch.distributed.run import main as torchrun

    args = ["--standalone", f"--nproc_per_node={nproc}", "-m", "visiontrain", *argv]
    print(f"launching: torchrun {' '.join(args)}", file=sys.stderr, flush=True)
    torchrun(args)
    return 0
