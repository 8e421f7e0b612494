"""Faults against a live server: clients that leave at every stage, request timeouts while waiting
for a slot, and hostile requests mixed into 32+ good concurrent streams, with --max-slots 1..4.
Good requests are neither lost nor altered (their greedy text equals offline ``generate``, their
seeded samples equal the same request run alone), every client is answered, the server ends
idle (in-flight 0, no slot pinned, no request object left alive) and its RSS stays flat."""

from __future__ import annotations

import gc
import json
import math
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file, save_file

from lorakit.serve.api import _Channel
from lorakit.serve.engine import Request
from tests.test_serve_support import ADAPTERS, PROMPTS, LiveServer, LogErrors, Offline, adapters_dir, make_server, one_thread

KEY = "fault-key"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base, tok, root = adapters_dir(tmp_path_factory)
    huge = root / "huge"  # finite weights whose products overflow: its logits are NaN/inf
    huge.mkdir()
    (huge / "adapter_config.json").write_text((root / "alpha" / "adapter_config.json").read_text())
    tensors = load_file(root / "alpha" / "adapter_model.safetensors")
    save_file({k: (t.sign() + (t == 0)) * 1e38 if "lora_B" in k else t for k, t in tensors.items()},
              huge / "adapter_model.safetensors")
    with one_thread():
        yield base, tok, root, Offline(base, tok, root)


def _wait_idle(server, seconds=20.0) -> None:
    deadline = time.monotonic() + seconds
    while (server.engine.in_flight or server.engine.counts() != (0, 0)) and time.monotonic() < deadline:
        time.sleep(0.02)


def _raw(port: int, path: str, body: dict, leave: str) -> None:
    """A client on a bare socket that hangs up at stage ``leave``: "mid-body" (half the body
    sent), "sent" (right after the request), "soon" (50 ms later), "first-bytes" (once the
    answer starts), "chunks" (after 3 stream events)."""
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        if leave == "mid-body":
            sock.sendall(head + data[: len(data) // 2])
            time.sleep(0.05)
            return
        sock.sendall(head + data)
        if leave == "soon":
            time.sleep(0.05)
        elif leave == "first-bytes":
            sock.recv(1)
        elif leave == "chunks":
            seen = b""
            while seen.count(b"data:") < 3:
                more = sock.recv(4096)
                if not more:
                    break
                seen += more
    finally:
        sock.close()


def _slow(server, seconds: float) -> None:
    """Make every forward of ``server`` take at least ``seconds`` more, so that generations
    last long enough to be left, timed out or waited on deterministically."""
    activate = server.pool.activate

    def slow(slots):
        time.sleep(seconds)
        activate(slots)

    server.pool.activate = slow


KINDS = [(endpoint, stream) for endpoint in ("/v1/completions", "/v1/chat/completions") for stream in (False, True)]


@pytest.fixture(scope="module")
def slow_live(env):
    """One slot, forwards slowed by 5 ms: generations last long enough to be left or waited on
    (a request for a second adapter waits for the slot: the path that used to crash)."""
    base, tok, root, _ = env
    server = make_server(base, tok, root, api_key=KEY, max_slots=1, max_tokens=400)
    _slow(server, 0.005)
    with LiveServer(server) as live:
        yield live


@pytest.mark.parametrize("stage", ["waiting", "running"])
@pytest.mark.parametrize("endpoint,stream", KINDS)
def test_client_leaving_before_its_first_token_frees_its_work(slow_live, endpoint, stream, stage):
    """Every request kind (completion / chat, streaming or not) whose client hangs up while it
    waits for a batch place, or while it generates, is cancelled: it leaves the queue or the
    batch at once instead of running to its end and holding its place and slot."""
    live = slow_live
    server = live.server
    hold, holding = threading.Event(), threading.Event()

    def blocker():  # one stream holds the only slot until the case is done
        with httpx.stream("POST", live.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "beta", "prompt": "a b", "max_tokens": 400, "temperature": 0,
                                "stream": True}, timeout=60) as r:
            for _ in r.iter_lines():
                holding.set()
                if hold.is_set():
                    break

    thread = None
    if stage == "waiting":
        thread = threading.Thread(target=blocker)
        thread.start()
        assert holding.wait(30)
    body = {"model": "alpha", "max_tokens": 400, "temperature": 0, "stream": stream}
    if endpoint.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": "Tell me a story"}]
    else:
        body["prompt"] = "Tell me a story"
    tokens_before = _counter(server.metrics.generation_tokens.render())
    _raw(live.port, endpoint, body, "soon")
    expected = (1, 0) if stage == "waiting" else (0, 0)
    deadline = time.monotonic() + 5
    while server.engine.counts() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.engine.counts() == expected, "the departed client's request is still queued or running"
    assert server.engine.in_flight == expected[0]
    if stage == "running":
        generated = _counter(server.metrics.generation_tokens.render()) - tokens_before
        assert generated < 200, generated  # stopped long before its 400 tokens
    hold.set()
    if thread is not None:
        thread.join()
    _wait_idle(server)
    assert server.engine.in_flight == 0 and server.pool.pins == [0]


def _counter(lines: list[str]) -> float:
    return float(lines[-1].rsplit(" ", 1)[1])


def test_waiting_request_times_out_over_http(env):
    """The issue's reproduction: --max-slots 1, a short --request-timeout, two adapters. The
    request for the second adapter (waiting for the slot, then too long to finish in time)
    gets 504, the running one gets its own 504 event, the server ends idle and serves the next
    request (it used to crash the engine step)."""
    base, tok, root, offline = env
    server = make_server(base, tok, root, api_key=KEY, max_slots=1, max_tokens=400, request_timeout=1.0)
    _slow(server, 0.005)
    with LiveServer(server) as live:
        http = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        out = {}

        def long_stream():
            with http.stream("POST", "/v1/completions", json={"model": "alpha", "prompt": "a b", "max_tokens": 400,
                                                              "temperature": 0, "stream": True}) as r:
                out["stream"] = [line for line in r.iter_lines() if line]

        t = threading.Thread(target=long_stream)
        t.start()
        while server.engine.counts()[0] < 1:
            time.sleep(0.005)
        r = http.post("/v1/completions", json={"model": "beta", "prompt": "x", "max_tokens": 300, "temperature": 0})
        assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]
        t.join()
        assert '"code": 504' in out["stream"][-2] and out["stream"][-1] == "data: [DONE]"
        _wait_idle(server)
        assert server.engine.in_flight == 0 and server.pool.pins == [0]
        r = http.post("/v1/completions", json={"model": "beta", "prompt": PROMPTS[0], "max_tokens": 5, "temperature": 0})
        assert r.json()["choices"][0]["text"] == offline.text("beta", PROMPTS[0], 5)
        http.close()


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _alive(kind) -> int:
    gc.collect()
    return sum(type(o) is kind for o in gc.get_objects())


def _good_jobs(seed: int = 0):
    """32 greedy streams over the 8 adapters and the base, and 4 seeded sampling requests."""
    rng = random.Random(seed)
    names = list(ADAPTERS) + [None]
    greedy = [(names[i % 9], PROMPTS[i % 5], rng.randint(4, 14), None) for i in range(32)]
    sampled = [(names[(3 * i) % 9], PROMPTS[i], 12, 100 + i) for i in range(4)]
    return greedy, sampled


def _hostile(live, http) -> list:
    """Hostile or careless requests; each returns what its client saw (nothing for clients
    that hang up)."""
    url = "/v1/completions"
    base = {"model": "alpha", "prompt": "hi", "max_tokens": 8}

    def post(body, **kw):
        return lambda: http.post(url, json=body, **kw).status_code

    def raw_bytes(data):
        return lambda: http.post(url, content=data, headers={"content-type": "application/json"}).status_code

    def stream_status(body):
        def go():
            with http.stream("POST", url, json=body) as r:
                lines = [line for line in r.iter_lines() if line]
            return r.status_code if r.status_code != 200 else ("error" if '"error"' in "".join(lines) else 200)
        return go

    leave = [lambda stage=stage, s=s: _raw(live.port, url, {**base, "stream": s, "max_tokens": 40,
                                                               "model": "gamma"}, stage)
             for stage in ("mid-body", "sent", "soon", "first-bytes", "chunks") for s in (False, True)
             if not (stage == "chunks" and not s)]
    leave.append(lambda: _raw(live.port, "/v1/chat/completions", {
        "model": "delta", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 60}, "soon"))
    return [
        ("seed-2**64", post({**base, "seed": 2**64, "temperature": 1}), 400),
        ("temperature-1e-40", post({**base, "temperature": 1e-40}), 200),
        ("nan-logits", post({**base, "model": "huge", "temperature": 1}), 500),
        ("nan-logits-greedy-stream", stream_status({**base, "model": "huge", "temperature": 0, "stream": True}),
         500),  # it fails at its first token, before the stream begins
        ("lone-surrogate", raw_bytes(b'{"model": "alpha", "prompt": "\\ud800", "max_tokens": 3}'), 400),
        ("nan-json", raw_bytes(b'{"model": "alpha", "prompt": "x", "temperature": NaN}'), 400),
        ("unknown-model", post({**base, "model": "nope"}), 404),
        ("client-timeout", lambda: _client_timeout(live), "timeout"),
        *[(f"leave-{i}", fn, None) for i, fn in enumerate(leave)],
    ]


def _client_timeout(live):
    """A client that gives up after 20 ms of waiting (an httpx read timeout)."""
    try:
        httpx.post(live.url + "/v1/completions", json={"model": "eta", "prompt": "x", "max_tokens": 60},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=httpx.Timeout(5, read=0.02))
    except httpx.ReadTimeout:
        return "timeout"
    return "answered"


def _storm(live, http, jobs, hostile: bool):
    """Run the good jobs (and, mixed in, the hostile ones) all at once; returns good texts and
    the hostile outcomes."""
    client = live.client()

    first_token: list[float] = []

    def good(job):
        model, prompt, n, seed = job
        kw = dict(temperature=0) if seed is None else dict(temperature=1.0, top_p=0.9, seed=seed)
        sent = time.monotonic()
        stream = client.completions.create(model=model or "tiny-base", prompt=prompt, max_tokens=n, stream=True, **kw)
        pieces = []
        for chunk in stream:
            if not pieces:
                first_token.append(time.monotonic() - sent)
            pieces.append(chunk.choices[0].text)
        return "".join(pieces)

    bad = _hostile(live, http) if hostile else []
    order = [("good", j) for j in jobs] + [("bad", b) for b in bad]
    random.Random(len(order)).shuffle(order)
    with ThreadPoolExecutor(len(order)) as pool:
        futures = [pool.submit(good, item) if kind == "good" else pool.submit(item[1]) for kind, item in order]
        results = [f.result(timeout=300) for f in futures]
    texts = [r for (kind, _), r in zip(order, results) if kind == "good"]
    outcomes = {item[0]: (r, item[2]) for (kind, item), r in zip(order, results) if kind == "bad"}
    good_jobs = [item for kind, item in order if kind == "good"]
    print(f"\nworst time to first token of {len(first_token)} good streams: {max(first_token):.2f} s")
    return dict(zip(map(tuple, good_jobs), texts)), outcomes


_EXPECTED: dict = {}


def _expected(offline, jobs) -> dict:
    """Offline ``generate`` text of each greedy job (computed once per module)."""
    for job in jobs:
        if job not in _EXPECTED:
            _EXPECTED[job] = offline.text(job[0], job[1], job[2])
    return {job: _EXPECTED[job] for job in jobs}


@pytest.mark.parametrize("slots", [1, pytest.param(2, marks=pytest.mark.heavy),
                                   pytest.param(3, marks=pytest.mark.heavy), 4])
def test_hostile_requests_in_32_good_streams_lose_and_alter_nothing(env, slots):
    base, tok, root, offline = env
    server = make_server(base, tok, root, api_key=KEY, max_slots=slots, max_batch=16, max_tokens=64,
                         max_queue=128)
    greedy, sampled = _good_jobs()
    expected = _expected(offline, greedy)
    with LiveServer(server) as live, LogErrors() as errors:
        http = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        storms = 3 if slots == 4 else 1
        rss = []
        for round_ in range(storms):
            got, outcomes = _storm(live, http, greedy + sampled, hostile=True)
            for job in greedy:
                assert got[job] == expected[job], job
            for name, (seen, want) in outcomes.items():
                assert want is None or seen == want, (name, seen, want)
            _wait_idle(server)
            health = http.get("/health").json()
            assert (health["running"], health["waiting"], health["in_flight"]) == (0, 0, 0), health
            assert server.pool.pins == [0] * slots
            rss.append(_rss_mib())
        assert _alive(Request) == 0 and _alive(_Channel) == 0, "requests were left alive after the traffic"
        if storms > 1:
            assert rss[-1] - rss[0] < 40, f"RSS grew {rss[0]:.0f} -> {rss[-1]:.0f} MiB over {storms - 1} storms"
            print(f"\nRSS after storm 1..{storms}: " + ", ".join(f"{x:.0f}" for x in rss) + " MiB")
        alone, _ = _storm(live, http, sampled, hostile=False)  # the seeded samples, without the storm
        for job in sampled:
            assert got[job] == alone[job], job
        assert errors.messages() == []  # no traceback or error in the log for any of it
        http.close()
