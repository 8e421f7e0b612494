"""The ``lorakit`` command table: a command whose module does not import is an error naming the
module (never a command that silently disappears), a missing optional extra an install hint."""

from __future__ import annotations

import sys

import pytest

from lorakit import cli


@pytest.fixture
def command_module(tmp_path, monkeypatch):
    """Install a one-file command module ``name`` with ``source`` as the ``lorakit`` command
    ``fake``."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(name: str, source: str) -> None:
        (tmp_path / f"{name}.py").write_text(source)
        sys.modules.pop(name, None)
        monkeypatch.setitem(cli.COMMANDS, "fake", name)
    yield install


def test_a_command_whose_import_breaks_is_an_error_naming_the_module(command_module, capsys):
    command_module("lorakit_fake_broken_cmd", "import lorakit.no_such_module\n")
    assert cli.main(["--help"]) == 1
    err = capsys.readouterr().err
    assert "lorakit_fake_broken_cmd" in err and "lorakit.no_such_module" in err
    assert "command 'fake'" in err and "Traceback" not in err
    command_module("lorakit_fake_broken_name", "from lorakit.models import no_such_name\n")
    assert cli.main(["models"]) == 1  # every command stops, not just the broken one
    err = capsys.readouterr().err
    assert "lorakit_fake_broken_name" in err and "no_such_name" in err
    with pytest.raises(cli.CommandImportError):
        cli.build_parser()


def test_a_missing_optional_extra_keeps_the_command_and_names_the_install(command_module, capsys,
                                                                          monkeypatch):
    monkeypatch.setitem(cli.EXTRAS, "lorakit_fake_optional_pkg", "serve")
    command_module("lorakit_fake_extra_cmd", "import lorakit_fake_optional_pkg\n")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "fake" in capsys.readouterr().out  # listed, with the hint
    assert cli.main(["fake", "--help"]) == 2 and "lorakit[serve]" in capsys.readouterr().err
    assert cli.main(["fake", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorakit fake: error:")
    assert "pip install 'lorakit[serve]'" in err and "lorakit_fake_optional_pkg" in err
