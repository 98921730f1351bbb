"""``visiontrain recipes [NAME]``: the training presets (visiontrain.config.recipes) and their settings."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from visiontrain.cli.output import print_table
from visiontrain.config.recipes import RECIPES, resolve


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """The ``visiontrain recipes [NAME]`` command."""
    cmd = sub.add_parser("recipes", help="list the training recipes (--recipe NAME); `recipes NAME` for its "
                         "settings", description="Recipes are presets of model, schedule, batch size, precision "
                         "and epochs; flags given with --recipe override them.")
    cmd.add_argument("name", nargs="?", metavar="NAME", help="show this recipe's settings")
    cmd.add_argument("--json", action="store_true", help="print as JSON")
    return {"recipes": _recipes_command}


def _recipes_command(args: argparse.Namespace) -> int:
    if args.name:
        settings = resolve(args.name)
        if args.json:
            print(json.dumps({"name": args.name, **_row(args.name), "settings": settings}, indent=2))
        else:
            print(f"{args.name}: {RECIPES.get(args.name).description}")
            print_table([{"key": k, "value": json.dumps(v)} for k, v in settings.items()], ["key", "value"])
        return 0
    rows = [{"name": name, **_row(name)} for name in RECIPES]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, ["name", "description"])
    return 0


def _row(name: str) -> dict[str, str]:
    recipe = RECIPES.get(name)
    return {"description": recipe.description, "measured": recipe.measured}
