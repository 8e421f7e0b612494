"""The `lorakit` command. Each subcommand lives beside the code it drives and registers itself.

A subcommand module exposes ``add_parser(subparsers)`` (which sets ``func`` on its parser) and
is imported only when the command table is built, so ``lorakit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lorakit.errors import NotFoundError

# command name -> module providing add_parser(subparsers)
COMMANDS = {
    "train": "lorakit.train.cli",
    "eval": "lorakit.eval.cli",
    "serve": "lorakit.serve.cli",
    "merge": "lorakit.tools_cli",
    "inspect": "lorakit.analysis.cli",
    "models": "lorakit.tools_cli",
    "data": "lorakit.train.data_cli",
    "config": "lorakit.train.convert",
    "ui": "lorakit.ui.cli",
    "export": "lorakit.export.cli",
    "predict": "lorakit.vision.cli",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every option's help ends with its default (unless it says it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or action.default in (argparse.SUPPRESS, None)
                or not action.option_strings or action.nargs == 0):  # a switch: off unless given
            return text
        return f"{text} (default: %(default)s)"


def _with_formatter(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand parser below it ``HelpFormatter``."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _with_formatter(child)


def build_parser() -> argparse.ArgumentParser:
    from lorakit import __version__

    parser = argparse.ArgumentParser(prog="lorakit", description="LoRA fine-tuning toolkit",
                                     epilog="Bad input ends in one line 'lorakit COMMAND: error: ...' "
                                            "and exit code 2; LORAKIT_TRACEBACK=1 shows the traceback.")
    parser.add_argument("--version", action="version", version=f"lorakit {__version__}")
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
    _with_formatter(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, NotFoundError, OSError) as err:
        # User errors (bad config or flag, unknown name, a path that is missing or cannot be
        # written) get one clear line, not a traceback. Other exceptions (a bare KeyError
        # included) are bugs and keep their traceback; LORAKIT_TRACEBACK=1 shows it for user
        # errors too.
        if os.environ.get("LORAKIT_TRACEBACK") == "1":
            raise
        print(f"lorakit {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lorakit {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    text = err
    if isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    return " ".join(str(text).split())


if __name__ == "__main__":
    sys.exit(main())
