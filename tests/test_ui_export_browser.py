"""The export buttons in a real headless Chromium: a finished run's page shows the Export box,
the llama.cpp LoRA button runs `lorakit export` on the server and the page shows its report;
a stopped run's buttons are disabled. Skips loudly like tests/test_ui_browser.py."""

from __future__ import annotations

import json
import time

import pytest

from tests.test_ui_browser import CHROMIUM, FLAGS, READY, dashboard  # skips the module loudly without a browser

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.test_train_fixtures import one_thread, tiny_model_dir, tokenizer  # noqa: E402,F401
from tests.ui_support import make_runs  # noqa: E402


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ui-export-browser") / "runs"
    make_runs(root, tiny_model_dir)
    with dashboard(root) as (_app, url):
        yield {"url": url, "root": root}


def test_export_buttons_run_the_export_and_show_its_report(ui, tmp_path_factory):
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
            args=FLAGS, headless=True, viewport={"width": 1200, "height": 820})
        page = context.new_page()
        page.goto(f"{ui['url']}?load={time.monotonic_ns()}#/run/c")   # stopped: nothing to export
        page.wait_for_function(READY, timeout=30000)
        page.wait_for_selector("#export-box #export-gguf-lora", timeout=30000)
        assert page.is_disabled("#export-gguf-lora") and "needs a finished run" in page.inner_text("#export-box")
        page.goto(f"{ui['url']}?load={time.monotonic_ns()}#/run/a")
        page.wait_for_function(READY, timeout=30000)
        page.wait_for_selector("#export-box #export-gguf-lora:not([disabled])", timeout=30000)
        assert page.locator("#export-box").count() == 1
        page.select_option("#export-gguf-lora-outtype", "f16")
        page.click("#export-gguf-lora")
        page.wait_for_function("document.getElementById('export-report').textContent.startsWith('{')",
                               timeout=300000)
        shown = json.loads(page.inner_text("#export-report"))
        out = ui["root"] / "a" / "exports" / "gguf-lora-f16.gguf"
        written = json.loads(out.with_name(out.name + ".report.json").read_text())
        assert shown == written and shown["tensor_types"] == {"F16": 2 * shown["pairs"]}
        assert "gguf-lora" in page.inner_text("#export-list")
        context.close()
