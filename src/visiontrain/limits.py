"""Bounds on what input may ask of the machine: file sizes, JSON nesting, worker processes, memory.

Every number a user types or a file holds is checked against a limit before it costs anything: a config
file is read up to 1 MiB (``--config /dev/zero`` stops there), JSON from a file may nest at most
:data:`MAX_JSON_DEPTH` deep (no ``RecursionError``), ``--workers`` is capped at a few per core, and the model
a checkpoint describes must fit its weights file and the machine's memory (models/checks.py).

>>> parse_json('{"a": [1, 2]}')
{'a': [1, 2]}
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

MAX_CONFIG_BYTES = 2**20  # a YAML config is a few KB; 1 MiB is generous
MAX_SIDECAR_BYTES = 64 * 2**20  # a checkpoint sidecar with 100,000 long class names stays under this
MAX_JSON_BYTES = 512 * 2**20  # split.json, summary.json … (a split of millions of file paths)
MAX_MANIFEST_BYTES = 2**30  # a CSV/JSONL manifest of millions of rows
MAX_JSON_DEPTH = 64  # visiontrain's own files nest 5 deep; Python's parser gives up near 1000
MAX_SEED = 2**32 - 1  # numpy's seed range; torch takes it too, and loaders derive seeds from it without overflow
MAX_WORKERS = 1024  # DataLoader processes: refused above this; capped at WORKERS_PER_CORE x cores at run time
WORKERS_PER_CORE = 4
MAX_THREADS = 1024  # torch.set_num_threads(10**6) crashes the process
MAX_EPOCHS = 10**6
MAX_CLASSES = 100_000  # classes of a dataset or a checkpoint
MAX_IMAGE_SIZE = 8192  # input side in pixels, for configs and checkpoint sidecars alike
MAX_HEAD_WIDTH = 65_536  # a hidden layer of a classification head (two of them: 4.3 G parameters already)


class FileTooLarge(OSError):
    """A file is over the size limit for its kind (read no further)."""


def read_capped(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, reading at most ``limit + 1`` of them: a huge file, a device such as
    ``/dev/zero`` or a FIFO that never ends is refused (FileTooLarge, an OSError) without reading it all."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"it is larger than {size_text(limit)}, the limit for {what}")
    return data


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` for text from a file: nesting deeper than :data:`MAX_JSON_DEPTH` is a ValueError (as is
    any other bad JSON), never a RecursionError here or later in the code that walks the result."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    stack = [(value, 1)]
    while stack:  # iterative: the check itself must not recurse
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth >= MAX_JSON_DEPTH:
                    raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
                stack.append((child, depth + 1))
    return value


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cap_workers(requested: int) -> int:
    """``requested`` DataLoader workers, at most :data:`WORKERS_PER_CORE` per usable core (one note line when
    capped: more processes than that only fight over the cores and multiply the memory)."""
    cap = WORKERS_PER_CORE * usable_cores()
    if requested <= cap:
        return requested
    _note_capped(requested, cap)
    return cap


@functools.cache
def _note_capped(requested: int, cap: int) -> None:
    print(f"note: --workers {requested} capped to {cap} ({WORKERS_PER_CORE} per CPU core, {cap // WORKERS_PER_CORE} "
          "cores)", file=sys.stderr, flush=True)


def memory_bytes(device: Any = None) -> int:
    """The memory a batch may use at most: the GPU's for a CUDA device, else the machine's RAM."""
    if getattr(device, "type", None) == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 64 * 2**30  # no way to ask (Windows): a large machine's worth


def size_text(n: float) -> str:
    """``412 GiB``, ``1 MiB``: a byte count for a message."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"
