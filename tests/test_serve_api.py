"""The OpenAI-compatible API against a live server (official ``openai`` client): models, completions
and chat per adapter and for the base, streaming, greedy outputs equal to offline ``generate``
with that adapter alone, mixed batches, adapter load/unload, limits and bad input."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from safetensors.torch import save_file

from tests.test_serve_support import one_thread, LiveServer, Offline, make_server, tiny_model, tokenizer, write_adapters

API_KEY = "sekrit"
PROMPTS = ["The quick brown fox", "Once upon a time, in a land far away,", "1, 2, 3,", "Dear diary"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base, tok = tiny_model(), tokenizer()
    write_adapters(base, root)
    server = make_server(base, tok, root, api_key=API_KEY, max_slots=4, max_tokens=64,
                         max_prompt_tokens=200, max_queue=64)
    with one_thread(), LiveServer(server) as live:
        yield live, Offline(base, tok, root), root


def test_models_lists_base_and_adapters(env):
    live, _, _ = env
    ids = [m.id for m in live.client().models.list().data]
    assert ids[0] == "tiny-base"
    assert {"alpha", "beta", "gamma", "delta"} <= set(ids)


@pytest.mark.parametrize("model", ["tiny-base", "alpha", "beta"])
def test_completion_greedy_equals_offline_generate(env, model):
    live, offline, _ = env
    out = live.client().completions.create(model=model, prompt=PROMPTS[1], max_tokens=20, temperature=0)
    assert out.choices[0].text == offline.text(None if model == "tiny-base" else model, PROMPTS[1], 20)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 20
    assert out.model == model


def test_adapters_change_the_output(env):
    live, _, _ = env
    texts = {m: live.client().completions.create(model=m, prompt=PROMPTS[0], max_tokens=12, temperature=0)
             .choices[0].text for m in ("tiny-base", "alpha", "beta")}
    assert len(set(texts.values())) == 3, texts


@pytest.mark.parametrize("model", ["tiny-base", "alpha", "gamma"])
def test_chat_greedy_equals_offline_generate(env, model):
    live, offline, _ = env
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    out = live.client().chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == offline.chat(None if model == "tiny-base" else model, messages, 16)


def test_streaming_completion_and_chat(env):
    live, offline, _ = env
    client = live.client()
    chunks = list(client.completions.create(model="delta", prompt=PROMPTS[2], max_tokens=24,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == offline.text("delta", PROMPTS[2], 24)
    assert chunks[-1].choices[0].finish_reason == "length" and len(chunks) > 2
    messages = [{"role": "user", "content": "Hi!"}]
    chunks = list(client.chat.completions.create(model="beta", messages=messages, max_tokens=10,
                                                 temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == offline.chat("beta", messages, 10)


def test_mixed_batch_of_three_adapters_and_base_equals_one_at_a_time(env):
    live, offline, _ = env
    client = live.client()
    jobs = [("alpha", PROMPTS[0]), ("beta", PROMPTS[1]), ("gamma", PROMPTS[2]), ("tiny-base", PROMPTS[3])] * 2
    before = _batch_steps(live)
    with ThreadPoolExecutor(len(jobs)) as pool:
        texts = list(pool.map(lambda j: client.completions.create(model=j[0], prompt=j[1], max_tokens=48,
                                                                  temperature=0).choices[0].text, jobs))
    alone = [client.completions.create(model=m, prompt=p, max_tokens=48, temperature=0).choices[0].text
             for m, p in jobs]
    assert texts == alone
    assert texts == [offline.text(None if m == "tiny-base" else m, p, 48) for m, p in jobs]
    after = _batch_steps(live)
    assert after["big"] > before["big"], "the concurrent requests never shared a decode step"


def _batch_steps(live) -> dict:
    """Decode steps so far: all, and those with at least 3 sequences (from /metrics)."""
    text = httpx.get(live.url + "/metrics", headers=_auth()).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("lorakit_batch_size_bucket"):
            counts[line.split('le="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    return {"all": counts.get("+Inf", 0), "big": counts.get("+Inf", 0) - counts.get("2", 0)}


def _auth() -> dict:
    return {"Authorization": f"Bearer {API_KEY}"}


def test_sampling_seed_reproducible_and_stop_strings(env):
    live, offline, _ = env
    client = live.client()
    kw = dict(model="alpha", prompt=PROMPTS[0], max_tokens=24, temperature=1.0, top_p=0.9)
    a = client.completions.create(seed=7, **kw).choices[0].text
    b = client.completions.create(seed=7, **kw).choices[0].text
    assert a == b
    greedy = offline.text("alpha", PROMPTS[0], 24)
    stop = greedy[len(greedy) // 2: len(greedy) // 2 + 3]
    out = client.completions.create(model="alpha", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop])
    assert out.choices[0].text == greedy[: greedy.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_load_and_unload_adapter_over_api(env, tmp_path):
    live, offline, root = env
    client = live.client()
    http = httpx.Client(base_url=live.url, headers=_auth())
    r = http.post("/v1/adapters", json={"name": "alpha-copy", "path": "alpha"})
    assert r.status_code == 200, r.text
    assert r.json()["rank"] == 4
    assert "alpha-copy" in [m.id for m in client.models.list().data]
    out = client.completions.create(model="alpha-copy", prompt=PROMPTS[3], max_tokens=10, temperature=0)
    assert out.choices[0].text == offline.text("alpha", PROMPTS[3], 10)
    assert http.post("/v1/adapters", json={"name": "alpha-copy", "path": "alpha"}).status_code == 409
    assert http.delete("/v1/adapters/alpha-copy").status_code == 200
    with pytest.raises(openai.NotFoundError, match="known models"):
        client.completions.create(model="alpha-copy", prompt="x", max_tokens=2)
    assert http.delete("/v1/adapters/alpha-copy").status_code == 404


def test_adapter_paths_outside_the_adapters_dir_are_refused(env, tmp_path):
    live, _, root = env
    http = httpx.Client(base_url=live.url, headers=_auth())
    outside = tmp_path / "evil"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    for path in ("../evil", str(outside), "link", "alpha/../../evil"):
        r = http.post("/v1/adapters", json={"name": "evil", "path": path})
        assert r.status_code == 403, (path, r.text)
        assert "outside the adapters directory" in r.json()["error"]["message"]
    r = http.post("/v1/adapters", json={"name": "../alpha"})
    assert r.status_code == 400 and "adapter name" in r.json()["error"]["message"]


def test_corrupt_adapter_fails_its_load_and_server_keeps_serving(env):
    live, offline, root = env
    bad = root / "corrupt"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((root / "alpha" / "adapter_config.json").read_text())
    (bad / "adapter_model.safetensors").write_bytes(b"\x00\x01 definitely not safetensors" * 10)
    http = httpx.Client(base_url=live.url, headers=_auth())
    r = http.post("/v1/adapters", json={"name": "corrupt2", "path": "corrupt"})
    assert r.status_code == 400
    assert "not a readable safetensors file" in r.json()["error"]["message"]
    assert "Traceback" not in r.text
    # found in the adapters dir on request: the request fails with the reason, nothing else does
    with pytest.raises(openai.UnprocessableEntityError, match="cannot be served"):
        live.client().completions.create(model="corrupt", prompt="x", max_tokens=2)
    out = live.client().completions.create(model="alpha", prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert out.choices[0].text == offline.text("alpha", PROMPTS[0], 8)


def test_unservable_adapter_kinds_are_refused_by_name(env):
    live, _, root = env
    http = httpx.Client(base_url=live.url, headers=_auth())
    config = json.loads((root / "alpha" / "adapter_config.json").read_text())
    for key, value, words in (("use_dora", True, "DoRA"), ("modules_to_save", ["lm_head"], "modules_to_save"),
                              ("lora_bias", True, "lora_bias")):
        d = root / f"kind-{key}"
        d.mkdir(exist_ok=True)
        (d / "adapter_config.json").write_text(json.dumps({**config, key: value}))
        (d / "adapter_model.safetensors").write_bytes((root / "alpha" / "adapter_model.safetensors").read_bytes())
        r = http.post("/v1/adapters", json={"name": f"k-{key}", "path": d.name})
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_unknown_model_is_404_naming_known_ones(env):
    live, _, _ = env
    with pytest.raises(openai.NotFoundError) as err:
        live.client().completions.create(model="nope", prompt="hi", max_tokens=2)
    assert "'nope' not found" in str(err.value) and "alpha" in str(err.value) and "tiny-base" in str(err.value)


def test_bad_requests_get_400_with_a_reason(env):
    live, _, _ = env
    client = live.client()
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="alpha", prompt="hi", max_tokens=-3)
    with pytest.raises(openai.BadRequestError, match="exceeds this server's limit"):
        client.completions.create(model="alpha", prompt="hi", max_tokens=65)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="alpha", prompt="hi", temperature=5)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.completions.create(model="alpha", prompt="hi", n=2)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="alpha", messages=[])
    http = httpx.Client(base_url=live.url, headers=_auth())
    r = http.post("/v1/completions", content=b'{"model": "alpha", "prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json=["not", "an", "object"])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"model": "alpha"})
    assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]
    r = http.post("/v1/completions", json={"model": "alpha", "prompt": [99999999]})
    assert r.status_code == 400 and "token ids" in r.json()["error"]["message"]
    assert http.get("/v1/nothing-here").status_code == 404


def test_oversized_prompt_is_413(env):
    live, _, _ = env
    with pytest.raises(openai.APIStatusError) as err:
        live.client().completions.create(model="alpha", prompt="word " * 400, max_tokens=2)
    assert err.value.status_code == 413 and "at most 200" in str(err.value)
    with pytest.raises(openai.APIStatusError) as err:
        live.client().completions.create(model="alpha", prompt="x" * 100_000, max_tokens=2)
    assert err.value.status_code == 413


def test_api_key_required_except_health(env):
    live, _, _ = env
    with pytest.raises(openai.AuthenticationError):
        live.client(api_key="wrong").models.list()
    assert httpx.get(live.url + "/v1/models").status_code == 401
    assert httpx.get(live.url + "/health").json()["status"] == "ok"


def test_metrics_prometheus_text(env):
    live, _, _ = env
    live.client().completions.create(model="gamma", prompt=PROMPTS[0], max_tokens=3, temperature=0)
    text = httpx.get(live.url + "/metrics", headers=_auth()).text
    for name in ("lorakit_requests_total", "lorakit_generation_tokens_total", "lorakit_prompt_tokens_total",
                 "lorakit_batch_size_bucket", "lorakit_request_latency_seconds_bucket",
                 "lorakit_time_to_first_token_seconds_count", "lorakit_adapter_slots_used"):
        assert name in text, name
    assert 'lorakit_adapter_cache_total{tier="host",result="hit"}' in text
    assert 'lorakit_adapter_cache_total{tier="slot",result="miss"}' in text
    assert 'lorakit_requests_total{endpoint="/v1/completions",status="200"}' in text
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_full_queue_answers_429(tmp_path):
    base, tok = tiny_model(), tokenizer()
    write_adapters(base, tmp_path, {"alpha": dict(r=2, target_modules=["q_proj"])})
    server = make_server(base, tok, tmp_path, max_batch=1, max_queue=1, max_tokens=400)
    with LiveServer(server) as live:
        client = live.client()
        gate = threading.Event()
        results = []

        def long_request():
            stream = client.completions.create(model="alpha", prompt="a b c", max_tokens=400, temperature=0,
                                               stream=True)
            for i, _ in enumerate(stream):
                if i == 0:
                    gate.set()
            results.append("done")

        runner = threading.Thread(target=long_request)
        runner.start()
        gate.wait(30)  # one request runs (the batch is full) ...
        waiter = threading.Thread(target=lambda: results.append(
            client.completions.create(model="alpha", prompt="x", max_tokens=2).choices[0].finish_reason))
        waiter.start()  # ... one waits (the queue is full) ...
        while server.engine.counts()[1] < 1:
            pass
        with pytest.raises(openai.RateLimitError, match="busy"):  # ... and the next is turned away
            client.completions.create(model="alpha", prompt="x", max_tokens=2)
        runner.join()
        waiter.join()
        assert sorted(results) == ["done", "length"]


def test_timeout_and_graceful_shutdown(tmp_path):
    base, tok = tiny_model(), tokenizer()
    write_adapters(base, tmp_path, {"alpha": dict(r=2, target_modules=["q_proj"])})
    server = make_server(base, tok, tmp_path, max_tokens=500, request_timeout=0.3, max_prompt_tokens=100)
    with LiveServer(server) as live:
        with pytest.raises(openai.APIStatusError) as err:  # 500 tokens cannot finish in 0.3 s
            live.client().completions.create(model="alpha", prompt="a " * 90, max_tokens=500)
        assert err.value.status_code == 504 and "timed out" in str(err.value)
    server = make_server(base, tok, tmp_path, max_tokens=60, shutdown_timeout=30)
    live = LiveServer(server).__enter__()
    client = live.client()
    outcome = {}
    started = threading.Event()

    def in_flight():
        stream = client.completions.create(model="alpha", prompt="hello", max_tokens=60, temperature=0, stream=True)
        pieces = []
        for chunk in stream:
            started.set()
            pieces.append(chunk.choices[0])
        outcome["finish"] = pieces[-1].finish_reason

    t = threading.Thread(target=in_flight)
    t.start()
    started.wait(30)
    live.__exit__(None, None, None)  # graceful: the running stream finishes first
    t.join()
    assert outcome["finish"] == "length"
    assert not live.thread.is_alive()
    with pytest.raises(openai.APIConnectionError):
        client.completions.create(model="alpha", prompt="x", max_tokens=2)


def test_client_going_away_stops_its_generation(tmp_path):
    base, tok = tiny_model(), tokenizer()
    write_adapters(base, tmp_path, {"alpha": dict(r=2, target_modules=["q_proj"])})
    server = make_server(base, tok, tmp_path, max_tokens=2000, max_prompt_tokens=100)
    # the server has a key only when $LORAKIT_API_KEY is set; "Bearer " alone is not a legal header
    headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
    with one_thread(), LiveServer(server) as live, httpx.Client(base_url=live.url, headers=headers, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json={"model": "alpha", "prompt": "a b", "max_tokens": 2000,
                                                          "temperature": 0, "stream": True}) as r:
            assert next(r.iter_lines()).startswith("data: ")  # one chunk, then the client hangs up
        deadline = time.monotonic() + 10
        while server.engine.counts() != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.engine.counts() == (0, 0)
        text = http.get("/metrics").text
    generated = float(text.split("\nlorakit_generation_tokens_total ")[1].split()[0])
    assert generated < 1000, generated  # stopped long before its 2000 tokens
