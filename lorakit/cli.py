"""The `lorakit` command. Each subcommand lives beside the code it drives and registers itself.

A subcommand module exposes ``add_parser(subparsers)`` (which sets ``func`` on its parser) and
is imported only when the command table is built, so ``lorakit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module providing add_parser(subparsers)
COMMANDS = {
    "train": "lorakit.train.cli",
    "eval": "lorakit.eval.cli",
    "serve": "lorakit.serve.cli",
    "merge": "lorakit.tools_cli",
    "inspect": "lorakit.analysis.cli",
    "models": "lorakit.tools_cli",
    "predict": "lorakit.vision.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorakit", description="LoRA fine-tuning toolkit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered = set()
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("lorakit"):
                continue  # that subsystem is not part of this build yet
            raise
        if module_name not in registered:
            module.add_parser(sub)
            registered.add(module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        # User errors (bad config, missing file, unknown name) get one clear line, not a traceback.
        print(f"lorakit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
