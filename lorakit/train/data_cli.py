"""``lorakit data preview``: the first examples of a training config as the model sees them."""

from __future__ import annotations

import argparse
import json
import sys

from lorakit.train import config_io
from lorakit.train.config import TrainConfig

_EPILOG = """examples:
  lorakit data preview examples/sql_demo.yaml
  lorakit data preview --data train.jsonl --format chat -n 3
  lorakit data preview examples/sql_demo.yaml --json > preview.json
"""


def add_preview_arguments(parser: argparse.ArgumentParser) -> None:
    """The output options shared by ``data preview`` and ``train --dry-run``."""
    parser.add_argument("-n", "--num-examples", type=int, default=5, metavar="N",
                        help="examples to show (default: 5)")
    parser.add_argument("--json", action="store_true",
                        help="print lorakit.train.preview.preview()'s dict as JSON (default: text)")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="trained tokens in green; without color they are inside [[ ]] "
                             "(default: auto = color on a terminal)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("data", help="inspect training data as the model sees it")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser(
        "preview", help="show the first examples templated and masked, with token statistics",
        description="Tokenize a training config's data exactly as `lorakit train` does (only "
                    "the tokenizer is loaded) and show the first examples with the trained "
                    "tokens highlighted, dropped/too-long row counts and token statistics.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config file (keys = the flags below)")
    add_preview_arguments(p)
    config_io.add_arguments(p)
    p.set_defaults(func=run, resume=None)
    return parser


def show(cfg: TrainConfig, args: argparse.Namespace, header: str = "") -> int:
    """Print the preview of ``cfg`` as ``args`` asks (text output after ``header``); exit code
    1 if training would stop."""
    from lorakit.train.preview import format_preview, preview

    if args.num_examples < 0:
        raise ValueError(f"-n must be >= 0, got {args.num_examples}")
    result = preview(cfg, args.num_examples)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
        print(header + format_preview(result, color))
    return 1 if result["stats"]["would_stop"] else 0


def run(args: argparse.Namespace) -> int:
    from lorakit.train.cli import config_from_args

    return show(config_from_args(args), args)
