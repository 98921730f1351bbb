"""CLI commands of the models package: ``models`` (list, ``show NAME``) and ``checkpoint`` (``inspect``,
``convert``). ``register(subparsers)`` adds them; each handler returns the exit code."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from visiontrain.cli.output import print_table
from visiontrain.config import ModelConfig, parse_override
from visiontrain.errors import ConfigError
from visiontrain.text import printable

_TRUST_HELP = ("unpickle a whole-model .pth (torch.save(model)) in full; this runs code from the file: only for "
               "files you made yourself")


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    models = sub.add_parser("models", help="list the models; `models show NAME` for its layers",
                            description="List the models (built-in; --all adds every torchvision classifier; "
                            "a --filter of 'timm/...' lists timm models when timm is installed).")
    models.add_argument("--all", action="store_true", help="include every torchvision classifier")
    models.add_argument("--filter", default="*", metavar="GLOB", help="only names matching, e.g. 'resnet*'")
    models.add_argument("--json", action="store_true", help="print as JSON")
    msub = models.add_subparsers(dest="models_command", metavar="show")
    show = msub.add_parser("show", help="layer table: name, type, output shape, parameters, trainable")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--image-size", type=int, help="input side in pixels [default: the model's, else 28]")
    show.add_argument("--channels", type=int, help="input channels [default: the model's, else 1]")
    show.add_argument("--classes", type=int, default=10, help="class count [default: 10]")
    show.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="a builder argument")
    show.add_argument("--head", type=int, nargs="+", help="hidden widths of a new head, e.g. --head 128")
    show.add_argument("--freeze", nargs="+", default=[], metavar="PATTERN", help="globs of parameters to freeze")
    show.add_argument("--freeze-backbone", action="store_true", help="freeze everything but the head")
    show.add_argument("--json", action="store_true", help="print as JSON")

    ckpt = sub.add_parser("checkpoint", help="inspect or convert weights files (the checkpoint doctor)")
    csub = ckpt.add_subparsers(dest="checkpoint_command", metavar="{inspect,convert}", required=True)
    ins = csub.add_parser("inspect", help="format, tensors, shapes, dtypes, metadata, which model it fits")
    ins.add_argument("file", metavar="FILE_OR_RUN")
    ins.add_argument("--tensors", type=int, default=20, metavar="N", help="tensors to list (0 = all) [default: 20]")
    ins.add_argument("--json", action="store_true", help="print as JSON")
    ins.add_argument("--trust-pickle", action="store_true", help=_TRUST_HELP)
    conv = csub.add_parser("convert", help="state_dict .pth → .safetensors + JSON sidecar (no unpickling)")
    conv.add_argument("file", metavar="FILE")
    conv.add_argument("--to", choices=["safetensors"], required=True, help="target format")
    conv.add_argument("--out", help="output file [default: beside FILE, .safetensors]")
    conv.add_argument("--force", action="store_true", help="overwrite an existing output")
    conv.add_argument("--trust-pickle", action="store_true", help=_TRUST_HELP)
    return {"models": _models, "checkpoint": _checkpoint}


def _models(args: argparse.Namespace) -> int:

    if args.models_command == "show":
        return _show(args)
    from visiontrain.models.zoo import model_rows

    rows = model_rows(args.filter, include_all=args.all)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, ["name", "parameters", "input", "source", "description"])
    return 0


def _show(args: argparse.Namespace) -> int:
    from visiontrain.models.assembly import build_model
    from visiontrain.models.factory import ModelInput
    from visiontrain.models.zoo import default_input, layer_rows, on_meta

    base = default_input(args.name, args.classes)
    inp = ModelInput(args.channels or base.channels, args.image_size or base.size, args.classes)
    builder_args = dict(parse_override(a) for a in args.arg)
    cfg = ModelConfig(args.name, builder_args, head=args.head, freeze=args.freeze,
                      freeze_backbone=args.freeze_backbone)
    with on_meta():
        built = build_model(cfg, inp)
    try:
        rows, out = layer_rows(built.model, inp)
    except (RuntimeError, NotImplementedError):  # an op without a meta kernel: measure on the CPU
        built = build_model(cfg, inp)
        rows, out = layer_rows(built.model, inp)
    total = sum(p.numel() for p in built.model.parameters())
    trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    summary = {"name": args.name, "input": [inp.channels, inp.size, inp.size], "output": out, "head": built.head,
               "parameters": total, "trainable": trainable}
    if args.json:
        print(json.dumps({**summary, "layers": rows}, indent=2))
        return 0
    print(f"{args.name} for {inp.channels}x{inp.size}x{inp.size} input, {inp.num_classes} classes")
    print_table([{**r, "parameters": f"{r['parameters']:,}"} for r in rows],
                ["layer", "type", "output", "parameters", "trainable"])
    print(f"total: {total:,} parameters ({trainable:,} trainable); output {'x'.join(map(str, out))}; "
          f"head: {built.head}")
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    from visiontrain.models.doctor import convert_to_safetensors, inspect_weights

    if args.checkpoint_command == "convert":
        result = convert_to_safetensors(args.file, args.out, args.force, trust_pickle=args.trust_pickle)
        stripped = ", ".join(f"{p!r} from {n} keys" for p, n in result["stripped_prefixes"].items())
        print(f"wrote {result['weights']} ({result['tensors']} tensors, {result['values']:,} values) and "
              f"{result['sidecar']}" + (f"; stripped {stripped}" if stripped else ""))
        if result["fits"]:
            print(f"fits: {_fits_text(result['fits'])}; use it: visiontrain train --model {result['fits'][0]['name']}"
                  f" --pretrained {result['weights']}")
        return 0
    if args.tensors < 0:
        raise ConfigError("--tensors must be 0 (all) or more")
    info = inspect_weights(args.file, trust_pickle=args.trust_pickle)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        _print_inspection(info, args.tensors)
    return 0


def _fits_text(fits: list[dict[str, Any]]) -> str:
    if not fits:
        return "no registered model (names differ); load it with --init-from and --rename/--init-match order"
    return "; ".join(f"{f['name']} ({'exact' if f['exact'] else str(f['shapes_differ']) + ' shapes differ'}, "
                     f"{f['classes']} classes, {f['channels']} channels)" for f in fits)


def _print_inspection(info: dict[str, Any], limit: int) -> None:

    how = [f"nested under {info['nested_in']!r}"] if info["nested_in"] else []
    how += [f"{p!r} stripped from {n} keys" for p, n in info["stripped_prefixes"].items()]
    dtypes = ", ".join(f"{d} ({n})" for d, n in info["dtypes"].items())
    print(printable(f"file:      {info['file']}"))
    print(f"format:    {info['format']}" + (f" ({'; '.join(how)})" if how else ""))
    print(f"tensors:   {info['tensors']} ({info['values']:,} values); dtypes: {dtypes}")
    for key, value in info["metadata"].items():
        print(f"metadata:  {key}: {json.dumps(value, default=str)[:160]}")
    own = info.get("own_model")
    if own and own["fits"]:
        print(printable(f"fits:      {own['name']} (the model its sidecar names; `visiontrain.load` rebuilds it "
                        "exactly)"))
    else:
        if own:
            print(printable(f"rebuilds:  NO, its sidecar model {own['name']} does not fit: "
                            f"{own.get('problem') or own}"))
        print(f"fits:      {_fits_text(info.get('fits', []))}")
    rows = info["table"] if limit == 0 else info["table"][:limit]
    print_table([{"tensor": r["name"], "shape": "x".join(map(str, r["shape"])) or "scalar", "dtype": r["dtype"]}
                 for r in rows], ["tensor", "shape", "dtype"])
    if len(rows) < len(info["table"]):
        print(f"… {len(info['table']) - len(rows)} more (--tensors 0 lists all)")
