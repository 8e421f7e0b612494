"""The host-cache counter of ``GET /metrics`` (``lorakit_adapter_cache_total{tier="host"}``)
counts each lookup as what it was, also while other requests' lookups run at the same time
(bench/serve_slora.py reports loads from it). Tiny model, real adapter files."""

from __future__ import annotations

import threading
import time

import pytest

import lorakit.serve.cache as cache_module
from tests.test_serve_support import make_server, tiny_setup, tokenizer

setup = pytest.fixture(scope="module", name="setup")(tiny_setup)


def _host(server) -> dict[str, float]:
    text = server.metrics.render()
    return {r: next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith(f'lorakit_adapter_cache_total{{tier="host",result="{r}"}}')), 0.0)
            for r in ("hit", "miss")}


def test_a_slow_miss_is_counted_as_a_miss_while_hits_run(setup, monkeypatch):
    base, root = setup
    server = make_server(base, tokenizer(), root)
    server.adapter("beta")  # resident: later lookups of it are hits
    assert _host(server) == {"hit": 0.0, "miss": 1.0}
    real, reading = cache_module.load_host_adapter, threading.Event()

    def slow_read(*args, **kwargs):  # the real read, after the hits below have run
        reading.set()
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "load_host_adapter", slow_read)
    loader = threading.Thread(target=server.adapter, args=("alpha",))
    loader.start()
    reading.wait(5)
    for _ in range(3):
        server.adapter("beta")
    loader.join()
    assert _host(server) == {"hit": 3.0, "miss": 2.0}
    assert (server.cache.hits, server.cache.misses) == (3, 2)


def test_concurrent_lookups_add_up(setup):
    base, root = setup
    server = make_server(base, tokenizer(), root)
    names = ["alpha", "beta", "gamma", "delta"]
    start = threading.Barrier(16)

    def look(i):
        start.wait()
        server.adapter(names[i % 4])

    threads = [threading.Thread(target=look, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = _host(server)
    assert counts["hit"] + counts["miss"] == 16
    assert (counts["hit"], counts["miss"]) == (server.cache.hits, server.cache.misses)
    assert counts["miss"] >= 4 and len(server.cache) == 4
