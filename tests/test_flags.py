"""``lorakit.flags``: the flags of ``lorakit train``, ``serve`` and ``eval`` come from dataclass
fields: types, choices, aliases, defaults and help, and ``as_flags`` reproduces the values."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from lorakit.argtypes import positive_int
from lorakit.flags import add_flags, as_flags, field_specs, setting


@dataclass
class Demo:
    name: str = setting("a", "a name")
    count: int = setting(2, "how many", type=positive_int)
    ratio: float = setting(0.5, "a fraction")
    on: bool = setting(True, "a switch")
    kind: Literal["x_y", "z"] = setting("x_y", "a kind", aliases={"x-y": "x_y"})
    path: str | None = setting(None, "optional path")
    items: list[str] = setting([], "repeatable", action="append", metavar="ITEM")
    mapping: dict[str, str] = setting({}, "pairs")
    anything: list[int] | int = setting(0, "YAML typed")
    must: str = setting("", "required", required=True)


def _parse(argv, **kw):
    parser = argparse.ArgumentParser()
    add_flags(parser, field_specs(Demo), **kw)
    return parser, parser.parse_args(argv)


def test_types_choices_aliases_and_defaults():
    _, args = _parse(["--must", "m"])
    assert vars(args) == {"name": "a", "count": 2, "ratio": 0.5, "on": True, "kind": "x_y", "path": None,
                          "items": [], "mapping": {}, "anything": 0, "must": "m"}
    _, args = _parse(["--must", "m", "--count", "3", "--ratio", "1e-3", "--no-on", "--kind", "x-y",
                      "--path", "1.0", "--items", "p", "--items", "q", "--mapping", "a=b,c=d",
                      "--anything", "[1, 2]"])
    assert (args.count, args.ratio, args.on, args.kind, args.path) == (3, 1e-3, False, "x_y", "1.0")
    assert (args.items, args.mapping, args.anything) == (["p", "q"], {"a": "b", "c": "d"}, [1, 2])


@pytest.mark.parametrize("argv", [[], ["--must", "m", "--count", "0"], ["--must", "m", "--kind", "w"],
                                  ["--must", "m", "--ratio", "half"]])
def test_bad_values_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parse(argv)
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err


def test_help_states_each_default_and_given_only_leaves_the_rest_out():
    parser, _ = _parse(["--must", "m"])
    text = " ".join(parser.format_help().split())
    assert "how many (default: 2)" in text and "a kind (default: x_y)" in text
    assert "{x_y,z}" in text and "--on, --no-on" in text
    parser, args = _parse(["--must", "m", "--count", "5"], dest=lambda n: f"cfg.{n}", given_only=True)
    assert vars(args) == {"cfg.must": "m", "cfg.count": 5}
    assert "how many (default: 2)" in " ".join(parser.format_help().split())


def test_as_flags_reproduces_the_values():
    values = {"name": "b", "count": 4, "on": False, "kind": "z", "mapping": {"a": "b"}, "anything": [3],
              "must": "m"}
    _, args = _parse(as_flags(values))
    assert {k: getattr(args, k) for k in values} == values


def test_a_list_default_is_a_fresh_copy_per_instance():
    a, b = Demo(), Demo()
    a.items.append("x")
    assert b.items == [] and field_specs(Demo)[6].default == []
