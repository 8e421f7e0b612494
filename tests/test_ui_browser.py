"""`lorakit ui` in a real headless Chromium (Debian's ``chromium``, driven by Playwright's
client): start a tiny-model training from the form, watch the step counter and the loss chart
update, stop and resume it, overlay two runs, chat with the base and two adapters side by side,
compare eval results, inspect. Each page is screenshotted and checked (not blank, expected
text present); the page load and a chart refresh are timed while the training runs.

Screenshots go to pytest's tmp dir; with ``LORAKIT_UI_SCREENSHOTS=docs/img`` they are also
written there as ``ui-<page>.png`` (the README's pictures).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HINT = "install with `make browser` (apt-get install chromium chromium-driver; pip install 'lorakit[browser]')"



def _skip_loudly(reason: str) -> None:
    """Skip this module, with the reason in the warnings summary that `pytest -q` prints too."""
    message = f"BROWSER TESTS SKIPPED: {reason}; {HINT}"
    warnings.warn(message, pytest.PytestWarning, stacklevel=2)
    pytest.skip(message, allow_module_level=True)


try:
    from playwright.sync_api import sync_playwright
except ImportError:
    _skip_loudly("the playwright client is not installed")
if not os.access(CHROMIUM, os.X_OK):
    _skip_loudly(f"no chromium at {CHROMIUM}")

import uvicorn  # noqa: E402

from lorakit.ui.app import create_app  # noqa: E402
from tests.test_train_fixtures import one_thread, tiny_model_dir, tokenizer  # noqa: E402,F401
from tests.ui_support import make_runs, wait_for  # noqa: E402

READY = "document.body.dataset.ready === (location.hash || '#/runs')"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard(root: Path):
    """``lorakit ui`` on ``root`` in a uvicorn thread on a free port: yields (app, url)."""
    app = create_app(root, cwd=root.parent)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the dashboard to start")
        yield app, f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ui-browser") / "runs"
    files = make_runs(root, tiny_model_dir)
    with dashboard(root) as (app, url):
        yield {"url": url, "root": root, "app": app, "model": tiny_model_dir, **files}
        if app.state.runs.status("live") in ("running", "stopping"):
            (root / "live" / "STOP").touch()
        app.state.jobs.wait("live", timeout=60)


@pytest.fixture(scope="module")
def page(ui, tmp_path_factory):
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            args=FLAGS, headless=True, viewport={"width": 1200, "height": 820})
        tab = context.new_page()
        yield tab
        context.close()


def go(page, ui, route: str) -> float:
    """Open ``route`` in a fresh page load (a new query string: never a same-document hash
    change); seconds until the page has rendered its data."""
    start = time.perf_counter()
    page.goto(f"{ui['url']}?load={time.monotonic_ns()}{route}")
    page.wait_for_function(READY, timeout=30000)
    return time.perf_counter() - start


def shot(page, tmp_path_factory, name: str, expect: list[str]) -> Path:
    """Screenshot the page, check it is not blank and shows ``expect``; copy it for the docs."""
    from PIL import Image, ImageStat

    path = tmp_path_factory.getbasetemp() / f"ui-{name}.png"
    page.screenshot(path=str(path))
    image = Image.open(path).convert("L")
    assert image.size == (1200, 820)
    assert len(image.getcolors(1 << 16) or range(1 << 16)) > 30, f"{name}: screenshot looks blank"
    assert ImageStat.Stat(image).stddev[0] > 10, f"{name}: screenshot has no contrast"
    text = page.inner_text("main")
    for needle in expect:
        assert needle in text, f"{name}: {needle!r} not on the page"
    out = os.environ.get("LORAKIT_UI_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)
    return path


def _series_points(page) -> int:
    return page.evaluate("[...document.querySelectorAll('#loss-chart g.series')]"
                         ".reduce((n, g) => n + +g.dataset.points, 0)")


def _step(page) -> int:
    return int(page.inner_text("#step").split("/")[0].strip())


def test_train_from_the_form_watch_it_stop_and_resume(ui, page, tmp_path_factory):
    go(page, ui, "#/runs")  # the first load of a new browser also starts its renderer
    idle_load = go(page, ui, "#/runs")
    go(page, ui, "#/new")
    page.fill("#run-name-input", "live")
    for name, value in {"model": str(ui["model"]), "data": str(ui["data"]), "max_steps": "300",
                        "batch_size": "4", "lr": "0.001", "save_every": "0", "warmup_ratio": "0",
                        "r": "8", "lora_alpha": "16"}.items():
        page.fill(f"#f-{name}", value)
    page.select_option("#f-precision", "fp32")
    page.click("#preview-btn")
    page.wait_for_selector("#preview .example span.trained", timeout=30000)
    assert page.inner_text("#preview .example span.trained").startswith("yes")
    shot(page, tmp_path_factory, "new", ["Data preview", "Is 0 a number?",
                                         "Training settings", "LoRA settings"])
    page.click("#launch")
    page.wait_for_url("**#/run/live", timeout=10000)
    page.wait_for_function("document.querySelector('#step') && "
                           "+document.querySelector('#step').textContent.split('/')[0] >= 2", timeout=60000)
    first_step, first_points = _step(page), _series_points(page)
    page.wait_for_function(f"+document.querySelector('#step').textContent.split('/')[0] > {first_step}",
                           timeout=30000)
    wait_for(lambda: _series_points(page) > first_points, 10, "the loss chart to grow")
    assert page.inner_text("#step").endswith("/ 300")
    # responsiveness while the trainer (a child process) uses both cores
    refreshes = [page.evaluate("window.__lorakit.lastRefreshMs")]
    n = page.evaluate("window.__lorakit.refreshes")
    page.wait_for_function(f"window.__lorakit.refreshes > {n}", timeout=10000)
    refreshes.append(page.evaluate("window.__lorakit.lastRefreshMs"))
    busy_load = go(page, ui, "#/runs")
    print(f"\nui timing: page load idle {idle_load * 1000:.0f} ms, during training "
          f"{busy_load * 1000:.0f} ms; run-page refresh (fetch + redraw) during training "
          f"{max(refreshes):.0f} ms")
    (tmp_path_factory.getbasetemp() / "ui-timing.json").write_text(json.dumps(
        {"page_load_idle_s": idle_load, "page_load_training_s": busy_load,
         "chart_refresh_training_ms": max(refreshes)}))
    assert busy_load < 5.0 and max(refreshes) < 2000
    go(page, ui, "#/run/live")
    page.wait_for_selector("#stop:not([disabled])")
    shot(page, tmp_path_factory, "run", ["Run live", "running", "Resolved config", "Gradient norm"])
    # stop: a checkpoint at the step it stopped at, then resume from it
    page.click("#stop")
    page.wait_for_selector(".stats [data-status=stopped]", timeout=60000)
    stopped_at = _step(page)
    assert f"step-{stopped_at:08d}" in page.inner_text(".buttons")
    page.wait_for_selector("#resume:not([disabled])")
    page.click("#resume")
    page.wait_for_selector(".stats [data-status=running]", timeout=30000)
    page.wait_for_function(f"+document.querySelector('#step').textContent.split('/')[0] > {stopped_at}",
                           timeout=60000)
    page.wait_for_selector("#stop:not([disabled])")
    page.click("#stop")
    page.wait_for_selector(".stats [data-status=stopped]", timeout=60000)
    assert "resumed from" in page.inner_text("pre.log")


def test_two_runs_overlaid(ui, page, tmp_path_factory):
    go(page, ui, "#/runs")
    for run in ("a", "b"):
        page.check(f"input.overlay[value={run}]")
    page.wait_for_function("document.querySelectorAll('#overlay-chart g.series').length === 2")
    names = page.evaluate("[...document.querySelectorAll('#overlay-chart g.series')].map(g => g.dataset.name)")
    assert names == ["a train", "b train"]
    points = page.evaluate("[...document.querySelectorAll('#overlay-chart g.series')].map(g => +g.dataset.points)")
    assert points == [8, 4]  # every step of each run
    shot(page, tmp_path_factory, "runs", ["Runs", "done", "stopped", "a train"])


def test_chat_base_and_two_adapters_side_by_side(ui, page, tmp_path_factory):
    go(page, ui, "#/chat")
    page.check("input.chat-run[value=a]")
    page.check("input.chat-run[value=b]")
    page.select_option("#chat-template", "alpaca")
    page.fill("#chat-max", "8")
    page.fill("#prompt", "Is 7 a number?")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.answer .foot.finished').length === 3", timeout=60000)
    columns = page.evaluate("[...document.querySelectorAll('.answer')].map(a => a.dataset.column)")
    assert columns == ["base", "a", "b"]
    answer_a = page.inner_text(".answer[data-column=a] .answer-text")
    assert answer_a.strip().startswith("yes")
    assert page.inner_text(".answer[data-column=base] .answer-text") != answer_a
    shot(page, tmp_path_factory, "chat", ["Chat", "base", "tokens"])


def test_compare_and_inspect_pages(ui, page, tmp_path_factory):
    go(page, ui, "#/compare")
    page.wait_for_selector("table.metrics")
    headers = page.evaluate("[...document.querySelectorAll('table.metrics th')].map(t => t.textContent)")
    assert headers == ["metric", "base", "a", "b"]
    assert page.locator("table.examples td.hit").count() > 0
    shot(page, tmp_path_factory, "compare", ["exact_match", "Per example", "held.jsonl"])
    go(page, ui, "#/inspect?run=a")
    page.select_option("#inspect-vs", "b")
    page.click("#inspect-btn")
    page.wait_for_selector("#inspect-out svg.heatmap")
    assert page.locator("#spectrum g.series").count() == 7  # q k v o gate up down
    shot(page, tmp_path_factory, "inspect", ["Singular spectrum", "Subspace similarity", "q_proj"])
