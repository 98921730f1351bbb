"""CLI commands of the data package: ``visiontrain data list|info|show|stats|pack``.

``register(subparsers)`` adds them; each handler takes the parsed args and returns the exit code.
SOURCE is whatever ``--data`` takes: a registered name, a folder, a manifest or ``module:Class``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visiontrain.cli.output import print_table
from visiontrain.config import RunConfig, load_config, parse_override
from visiontrain.config.trust import read_config_file
from visiontrain.errors import ConfigError
from visiontrain.text import slug

_MAX_SHOWN = 1024  # images in one `data show` grid (a 32 x 32 sheet)
# Where each registered dataset keeps its files under --data-dir (for `data list`'s "here?" column).
_LOCATIONS = {"mnist": "MNIST/raw", "cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python",
              "fashion_mnist": "FashionMNIST/raw", "kmnist": "KMNIST/raw"}
_KINDS = [
    ("PATH/", "a folder with one sub-folder per class (ImageFolder layout), optionally train/ val/ test/"),
    ("FILE.csv|.jsonl", "a manifest of path,label (classification), path,labels (multi-label: cat|dog) or "
                        "path,value (regression) rows"),
    ("hf:NAME_OR_PATH[:config]", "a Hugging Face dataset: a save_to_disk folder, .parquet/.arrow files or a Hub "
                                 "name (the hf extra); --data-arg image=… label=… streaming=true"),
    ("module:Class", "your own torch Dataset by import path; constructor arguments via --data-arg KEY=VALUE"),
    ("shards:OUT/", "WebDataset .tar shards written by `visiontrain data pack` (streamed, resumable mid-epoch)"),
]
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    datasets = sub.add_parser("datasets", help="list the registered datasets")
    datasets.add_argument("--json", action="store_true", help="print as JSON")
    data = sub.add_parser("data", help="list, inspect, show and measure datasets",
                          description="Datasets: list what exists, audit one (counts, sizes, duplicates, "
                          "leakage), show a grid of (augmented) samples, compute per-channel statistics.")
    dsub = data.add_subparsers(dest="data_command", metavar="{list,info,show,stats,pack}", required=True)
    lst = dsub.add_parser("list", help="registered datasets and the other kinds of source")
    lst.add_argument("--data-dir", default=None, help="dataset cache folder to check [default: data]")
    lst.add_argument("--json", action="store_true", help="print as JSON")
    info = dsub.add_parser("info", help="classes, counts per class and split, sizes/modes, imbalance, duplicates "
                           "and train/val/test leakage")
    _source_args(info)
    info.add_argument("--json", action="store_true", help="print the full report as JSON")
    show = dsub.add_parser("show", help="a labelled grid of samples as a PNG and in TensorBoard")
    _source_args(show)
    show.add_argument("--augment", action="store_true", help="apply the training augmentation (else the "
                      "deterministic evaluation transforms)")
    show.add_argument("--split", default="train", help="split to show [default: train]")
    show.add_argument("--count", type=int, default=32, help=f"images in the grid, 1 to {_MAX_SHOWN} [default: 32]")
    show.add_argument("--model", help="size/channels as this model takes them [default: the data's own]")
    show.add_argument("--out", default="data-show", help="folder for the PNG and the TensorBoard events "
                      "[default: data-show]")
    stats = dsub.add_parser("stats", help="per-channel mean/std (what normalize: auto/dataset uses)")
    _source_args(stats)
    stats.add_argument("--split", default="train", help="split to measure [default: train]")
    stats.add_argument("--limit", type=int, default=5000, help="at most this many images from a folder "
                       "[default: 5000]; in-memory datasets use all")
    stats.add_argument("--json", action="store_true", help="print as JSON")
    pack = dsub.add_parser("pack", help="write a source into WebDataset .tar shards + index.json (train from them "
                           "with --data shards:OUT/)")
    _source_args(pack)
    pack.add_argument("out", metavar="OUT", help="folder for the shards and index.json (new, or a killed pack's)")
    pack.add_argument("--shard-size", default="1GB", help="bytes per shard, e.g. 256MB, 1GB [default: 1GB]")
    pack.add_argument("--resize-to", type=int, help="resize each image's shorter side to this many pixels "
                      "(JPEGs stay JPEG at --quality, the rest PNG) [default: store each JPEG/PNG as it is]")
    pack.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded JPEGs [default: 90]")
    return {"data": _data, "datasets": _datasets}


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", metavar="SOURCE", help="dataset name, folder, manifest or module:Class "
                   "[default: the --config's data]")
    p.add_argument("--config", help="YAML config whose data section to use")
    p.add_argument("--data-dir", help="dataset cache folder [default: data]")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE", help="a dataset argument")
    p.add_argument("--val-split", type=float, help="fraction held out when the data has no val split")
    p.add_argument("--seed", type=int, help="seed of the val split [default: 0]")
    p.add_argument("--image-size", type=int, help="square side in pixels [default: the data's own]")
    p.add_argument("--bad-images", default="skip", choices=["error", "skip"],
                   help="on unreadable images: stop, or report and go on [default: skip]")
    p.add_argument("--max-pixels", type=int, help="refuse images declaring more pixels")
    p.add_argument("--follow-symlinks", action="store_true", default=None, help="follow folder symlinks inside the "
                   "data folder (never out of it, in a loop or into another class's folder) [default: off]")
    p.add_argument("--workers", type=int, help="decoding worker processes (at most 4 per CPU core)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    p.add_argument("--trust-code", action="store_true", help="let a --config inside a run folder name the "
                   "dataset as module:Class (imports it); only for runs you made yourself")


def _data(args: argparse.Namespace) -> int:
    return {"list": _list, "info": _info, "show": _show, "stats": _stats, "pack": _pack}[args.data_command](args)


def _pack(args: argparse.Namespace) -> int:
    import time

    from visiontrain.data.pack import pack

    cfg = config_from(args)
    started = time.perf_counter()
    index = pack(cfg.data, cfg.train.seed, Path(args.out), shard_bytes=parse_size(args.shard_size),
                 resize_to=args.resize_to, quality=args.quality, log=lambda line: print(line, flush=True))
    images = sum(split["count"] for split in index["splits"].values())
    bad = f"; {len(index['bad_images'])} bad images left out (listed in the index)" if index["bad_images"] else ""
    print(f"packed {images:,} images into {args.out} in {time.perf_counter() - started:.1f}s{bad}; "
          f"train with --data shards:{args.out}")
    return 0


def parse_size(text: str) -> int:
    """``1GB`` → 10**9, ``256MiB`` → 2**28, ``5000000`` → 5000000.

    >>> parse_size("1GB"), parse_size("256MiB"), parse_size("1.5 MB")
    (1000000000, 268435456, 1500000)
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(f"--shard-size {text!r} is not a size; write e.g. 256MB or 1GB")
    return int(float(match.group(1)) * _UNITS[unit])


def config_from(args: argparse.Namespace) -> RunConfig:
    """The run config the data commands work on: --config, then the flags (SOURCE is data.name)."""
    overrides: dict[str, Any] = {f"data.{key}": getattr(args, key)
                                 for key in ("val_split", "image_size", "bad_images", "max_pixels", "workers",
                                             "follow_symlinks")
                                 if getattr(args, key) is not None}
    if args.source:
        overrides["data.name"] = args.source
    if args.data_dir:
        overrides["data.dir"] = args.data_dir
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    for item in args.data_arg:
        key, value = parse_override(item)
        overrides[f"data.args.{key}"] = value
    for item in args.set:
        key, value = parse_override(item)
        overrides[key] = value
    if not args.source and not args.config:
        raise ConfigError("name a SOURCE (a dataset, folder, manifest or module:Class) or give --config")
    # a --config inside a run folder is the run's, not the user's: it may not name code (visiontrain.config.trust)
    cfg = load_config(read_config_file(args.config, trust_code=args.trust_code, given=overrides),
                      where=args.config) if args.config else RunConfig()
    return cfg.override(overrides, where="command line")


def _list(args: argparse.Namespace) -> int:
    from visiontrain.data import DESCRIPTIONS

    root = Path(args.data_dir or "data")
    rows = [{"name": name, "here": _here(name, root), "description": text}
            for name, text in sorted(DESCRIPTIONS.items())]
    rows += [{"name": name, "here": "", "description": text} for name, text in _KINDS]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, ["name", "here", "description"])
    return 0


def _here(name: str, root: Path) -> str:
    if name not in _LOCATIONS:
        return "made on the fly"
    return f"yes ({root / _LOCATIONS[name]})" if (root / _LOCATIONS[name]).is_dir() else "download on first use"


def _info(args: argparse.Namespace) -> int:
    from visiontrain.data.audit import describe, format_report
    from visiontrain.data.sources import load_source

    cfg = config_from(args)
    report = describe(load_source(cfg.data, cfg.train.seed))
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from visiontrain.data.pipeline import sample_stats
    from visiontrain.data.sources import load_source

    if args.limit < 1:
        raise ConfigError(f"--limit must be at least 1 (images to measure), got {args.limit}")
    cfg = config_from(args)
    source = load_source(cfg.data, cfg.train.seed)
    split = _split(source, args.split)
    mean, std, used = sample_stats(split, source.channels, args.limit, cfg.train.seed, cfg.data.max_pixels,
                                   cfg.data.workers)
    result = {"source": source.name, "split": args.split, "images": used, "mean": list(mean), "std": list(std)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{source.name} {args.split}: per-channel statistics of {used:,} images, in [0, 1] units")
    print(f"  mean: {list(mean)}\n  std:  {list(std)}")
    print("use them: normalize: dataset (computed at each run), or add to data.transforms.eval "
          f"{{name: Normalize, mean: {list(mean)}, std: {list(std)}}}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import torch

    from visiontrain.data import plan_for, resolve_preprocessing
    from visiontrain.data.audit import label_text
    from visiontrain.data.batching import BadImageLog
    from visiontrain.data.pipeline import make_loader
    from visiontrain.data.show import save_grid
    from visiontrain.data.sources import load_source

    if not 1 <= args.count <= _MAX_SHOWN:
        raise ConfigError(f"--count must be 1 to {_MAX_SHOWN} (images in one grid), got {args.count}")
    cfg = config_from(args)
    data = dataclasses.replace(cfg.data, batch_size=args.count, eval_batch_size=args.count)
    source = load_source(data, cfg.train.seed)
    split = _split(source, args.split)
    channels, size = _model_input(args.model)
    prep, train_specs, _ = resolve_preprocessing(data, source, channels, size)
    pick = torch.randperm(len(split), generator=torch.Generator().manual_seed(cfg.train.seed))[:args.count]
    source.splits = {"train" if args.augment else args.split: split.subset(pick)}
    name = next(iter(source.splits))
    plan = plan_for(source, name, prep, train_specs if args.augment else None, torch.device("cpu"))
    loader = make_loader(source.splits[name], plan, data, cfg.train.seed, BadImageLog("skip"), cache=False)
    images, labels = next(iter(loader))
    names = [label_text(v, source.task, source.classes) for v in labels]
    if images.dim() == 5:  # FiveCrop/TenCrop: every crop, each labelled
        names = [n for n in names for _ in range(images.shape[1])]
    stem = f"{slug(source.name, 'data')}-{args.split}{'-augmented' if args.augment else ''}"
    png, events = save_grid(images, names, Path(args.out), stem, f"data/{stem}")
    print(f"wrote {png} ({len(names)} images, {'training augmentation' if args.augment else 'evaluation view'}, "
          f"{prep.channels}x{prep.size}x{prep.size})")
    print(f"tensorboard --logdir {events}", file=sys.stderr)
    return 0


def _split(source: Any, name: str) -> Any:
    from visiontrain.errors import DataError

    if name not in source.splits:
        raise DataError(f"dataset {source.name!r} has no {name!r} split; it has: {', '.join(source.splits)}")
    return source.splits[name]


def _model_input(model: str | None) -> tuple[int | None, int | None]:
    if model is None:
        return None, None
    from visiontrain.models import get_entry

    entry = get_entry(model)
    return entry.channels, entry.default_size


def _datasets(args: argparse.Namespace) -> int:
    from visiontrain.data import DESCRIPTIONS

    rows = [{"name": k, "description": v} for k, v in sorted(DESCRIPTIONS.items())]
    rows.append({"name": "PATH", "description": "a folder with one sub-folder per class (ImageFolder layout), "
                 "optionally split into train/ val/ test/"})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, ["name", "description"])
    return 0
