"""Every ```python block in README.md and docs/*.md runs, as written, in the test suite.

How to write a block (this file finds new blocks by itself):

- A block is a complete program: it imports what it uses and defines every name it uses. It
  runs in a fresh namespace (``__name__ == "__main__"``) of the test process, with an empty
  temporary directory as the working directory (so it may write files there) and
  ``HF_HUB_OFFLINE=1``; ``LORAKIT_REPO`` holds the repository root for blocks that read
  shipped files. Use the embedded model
  (``"smollm2-135m-instruct"``) or build a tiny one in the block; nothing can be downloaded.
- A block that cannot run here opts out with a first line of exactly this form, and a reason:

      # doc-test: skip (needs a running `lorakit serve`; the same calls are tested in tests/x.py)

  The reason is shown in the test report. A marker without a reason fails the suite.
- A block that takes minutes runs only under ``make test-all`` (the ``heavy`` marker):

      # doc-test: heavy (quantizes all 210 layers of the embedded model: ~1 CPU-minute)

The fast test below checks that every block compiles and that every marker has a reason; the
slow one runs each block (they load the embedded model).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"^# doc-test: (?P<kind>skip|heavy)(?: \((?P<reason>.*)\))?\s*$")


def doc_blocks() -> list[tuple[str, str]]:
    """``(file:line, code)`` of every python block of README.md and docs/*.md."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 2  # the block's first line
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return found


BLOCKS = doc_blocks()


def _marker(code: str) -> tuple[str, str] | None:
    """``(kind, reason)`` of the block's ``# doc-test:`` first line, or None."""
    first = code.splitlines()[0] if code.strip() else ""
    match = MARKER.match(first)
    return None if match is None else (match.group("kind"), match.group("reason") or "")


def _skip_reason(code: str) -> str | None:
    marker = _marker(code)
    return marker[1] if marker and marker[0] == "skip" else None


def _params():
    for where, code in BLOCKS:
        heavy = (_marker(code) or ("",))[0] == "heavy"
        yield pytest.param(where, code, id=where, marks=[pytest.mark.heavy] if heavy else [])


def test_blocks_compile_and_markers_have_reasons():
    assert BLOCKS, "no python blocks found in README.md / docs"
    for where, code in BLOCKS:
        compile(code, where, "exec")
        marker = _marker(code)
        assert marker is None or marker[1], f"{where}: '# doc-test: {marker[0]}' needs a reason in ( )"
        if "doc-test:" in code and marker is None:
            raise AssertionError(f"{where}: a doc-test marker must be the block's first line, "
                                 "as '# doc-test: skip (reason)' or '# doc-test: heavy (reason)'")


@pytest.mark.slow
@pytest.mark.parametrize("where, code", list(_params()))
def test_doc_block_runs(where, code, tmp_path, monkeypatch):
    reason = _skip_reason(code)
    if reason:
        pytest.skip(f"{where}: {reason}")
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORAKIT_REPO", str(ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    try:
        exec(compile(code, where, "exec"), {"__name__": "__main__"})
    except SystemExit as exit_:  # a block may end with sys.exit(main(...))
        assert exit_.code in (0, None), f"{where} exited with {exit_.code}"
