"""Many clients at once: 32 concurrent streaming clients over 8 adapters (through 4 adapter slots,
so slots are reused while requests run) all complete with the offline ``generate`` output, while
other adapters are loaded, used and unloaded over the API during the traffic."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.test_serve_support import ADAPTERS, PROMPTS, LiveServer, Offline, adapters_dir, make_server, one_thread, write_adapters


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base, tok, root = adapters_dir(tmp_path_factory)
    extra = {f"extra{i}": dict(r=2 + i, lora_alpha=4, target_modules=["q_proj", "up_proj"]) for i in range(3)}
    write_adapters(base, root / "pending", extra, seed=100)
    server = make_server(base, tok, root, max_slots=4, max_batch=16, max_tokens=64)
    with one_thread(), LiveServer(server) as live:
        yield live, Offline(base, tok, root), root


def _stream(client, model, prompt, max_tokens):
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True)
    chunks = list(stream)
    return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason


def test_32_streaming_clients_over_8_adapters_with_load_unload_traffic(env):
    live, offline, root = env
    client = live.client()
    adapters = list(ADAPTERS)
    assert len(adapters) == 8
    jobs = [(adapters[i % 8], PROMPTS[i % 5], 8 + (i * 7) % 33) for i in range(32)]
    expected = [offline.text(m, p, n) for m, p, n in jobs]
    stop = threading.Event()
    churn_errors, churned = [], []

    def churn():
        """Load an adapter, run a request on it, unload it; repeat until the traffic ends."""
        http = httpx.Client(base_url=live.url, timeout=60)
        i = 0
        while not stop.is_set():
            name = f"extra{i % 3}"
            r = http.post("/v1/adapters", json={"name": name, "path": f"pending/{name}"})
            if r.status_code != 200:
                churn_errors.append(("load", r.status_code, r.text))
                break
            try:
                text, _ = _stream(client, name, "Hi", 4)
                churned.append(text)
            except Exception as err:  # recorded, asserted below
                churn_errors.append(("request", name, repr(err)))
            r = http.delete(f"/v1/adapters/{name}")
            if r.status_code != 200:
                churn_errors.append(("unload", r.status_code, r.text))
                break
            i += 1

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda j: _stream(client, *j)[0], jobs))
    finally:
        stop.set()
        churner.join()
    assert results == expected
    assert not churn_errors, churn_errors
    assert churned, "no adapter was loaded and unloaded during the traffic"
    assert {m.id for m in client.models.list().data}.isdisjoint({"extra0", "extra1", "extra2"})
