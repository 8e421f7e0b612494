"""`lorakit --version`, and every --help of every (sub)command lists each option's default."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import lorakit
from lorakit.cli import build_parser, main


def _parsers(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, path + (name,))


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"lorakit {lorakit.__version__}\n"


def test_every_help_shows_every_default():
    for path, parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            assert action.help, (path, action.option_strings)
            start = text.index(" ".join(action.help.split()[:3]))
            shown = text[start:start + len(action.help) + 200]
            if action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
                continue  # no value to show: optional without default, or a switch
            assert "default" in shown.lower(), (path, action.option_strings, shown)


def test_help_runs_as_a_command():
    out = subprocess.run([sys.executable, "-m", "lorakit.cli", "data", "preview", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "(default: 5)" in out.stdout
