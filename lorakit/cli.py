"""The `lorakit` command. Each subcommand lives beside the code it drives and registers itself.

A subcommand module exposes ``add_parser(subparsers)`` (which sets ``func`` on its parser) and
is imported only when the command table is built, so ``lorakit --help`` stays fast.

A command module that cannot be imported because an optional extra is missing (``EXTRAS``)
still shows up, and running it says what to install. Any other import failure is a bug and
stops the whole command with an error that names the module: a command never silently
disappears.
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
    "merge": "lorakit.merge_cli",
    "inspect": "lorakit.analysis.cli",
    "models": "lorakit.models_cli",
    "data": "lorakit.train.data_cli",
    "config": "lorakit.train.convert",
    "ui": "lorakit.ui.cli",
    "export": "lorakit.export.cli",
    "predict": "lorakit.vision.cli",
}

# top-level module of an optional dependency -> the extra of pyproject.toml that installs it
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "pydantic": "serve", "matplotlib": "train",
          "datasets": "hub", "diffusers": "diffusion", "PIL": "vision", "sklearn": "vision"}


class CommandImportError(ImportError):
    """A command's module failed to import for a reason other than a missing optional extra."""


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
        module, missing = _import_command(name, module_name)
        if module is None:
            _add_missing_extra(sub, name, module_name, missing)
        elif module_name not in registered:
            module.add_parser(sub)
            registered.add(module_name)
    _with_formatter(parser)
    return parser


def _import_command(name: str, module_name: str):
    """``(module, None)``, or ``(None, missing module)`` when an optional extra it needs is not
    installed; any other import failure raises ``CommandImportError``."""
    try:
        return importlib.import_module(module_name), None
    except ImportError as err:
        if isinstance(err, ModuleNotFoundError) and (err.name or "").partition(".")[0] in EXTRAS:
            return None, err.name
        raise CommandImportError(f"command {name!r}: importing {module_name} failed: "
                                 f"{type(err).__name__}: {err}") from err


def _add_missing_extra(sub, name: str, module_name: str, missing: str) -> None:
    """A stand-in for a command whose optional extra is missing: running it names the extra."""
    extra = EXTRAS[missing.partition(".")[0]]
    hint = f"needs the optional package {missing!r}: pip install 'lorakit[{extra}]'"
    # no options of its own ("\0" prefix): whatever follows the name, even --help, runs it
    parser = sub.add_parser(name, help=f"(not installed: {hint})", add_help=False, prefix_chars="\0")
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)

    def unavailable(args):
        raise NotFoundError(f"{module_name} {hint}")

    parser.set_defaults(func=unavailable)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except CommandImportError as err:
        if os.environ.get("LORAKIT_TRACEBACK") == "1":
            raise
        print(f"lorakit: error: {_one_line(err)} (a bug in this install of lorakit; "
              "LORAKIT_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1
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
