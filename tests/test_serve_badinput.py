"""The server's bad-input corpus: one table of hostile or careless requests against a live server.
Each case must get its 4xx with a message naming the offending field or thing, leave no
traceback in the response or the server's log, and leave the server serving: after every case
a good request still gets its exact greedy text."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from safetensors.torch import load_file, save_file

from tests.test_serve_support import LiveServer, LogErrors, make_server, one_thread, tiny_model, tokenizer, write_adapters

API_KEY = "corpus-key"
GOOD = {"model": "alpha", "prompt": "Once upon a time", "max_tokens": 3, "temperature": 0}


def _bad_adapters(root) -> None:
    """Adapter directories a request may name that cannot be served."""
    config = (root / "alpha" / "adapter_config.json").read_text()
    weights = root / "alpha" / "adapter_model.safetensors"
    for name, cfg, blob in (("corrupt", config, b"\x00 not safetensors" * 8),
                            ("cfglist", "[1, 2, 3]", weights.read_bytes()),
                            ("cfgjunk", "{not json", weights.read_bytes()),
                            ("dora", json.dumps({**json.loads(config), "use_dora": True}), weights.read_bytes()),
                            ("noweights", config, None)):
        d = root / name
        d.mkdir()
        (d / "adapter_config.json").write_text(cfg)
        if blob is not None:
            (d / "adapter_model.safetensors").write_bytes(blob)
    d = root / "nan"
    d.mkdir()
    (d / "adapter_config.json").write_text(config)
    tensors = load_file(weights)
    save_file({k: t * math.nan if "lora_B" in k else t for k, t in tensors.items()}, d / "adapter_model.safetensors")
    d = root / "overflow"  # finite in float32, but lora_B * scaling (2) is not
    d.mkdir()
    (d / "adapter_config.json").write_text(config)
    save_file({k: t.sign() * 3e38 if "lora_B" in k else t for k, t in tensors.items()}, d / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base, tok = tiny_model(), tokenizer()
    write_adapters(base, root, {"alpha": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                                "big": dict(r=16, target_modules=["q_proj"])})
    _bad_adapters(root)
    server = make_server(base, tok, root, api_key=API_KEY, max_slots=2, max_rank=8, max_tokens=64,
                         max_prompt_tokens=200, max_queue=16)
    with one_thread(), LiveServer(server) as live, LogErrors() as catcher:
        http = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        good = http.post("/v1/completions", json=GOOD).json()["choices"][0]["text"]
        yield live, http, good, catcher
        http.close()


def _c(**fields):  # a completion body with some fields changed (None: removed)
    body = {**GOOD, **fields}
    return {k: v for k, v in body.items() if v is not None}


_CHAT = {"model": "alpha", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def _chat(**fields):
    body = {**_CHAT, **fields}
    return {k: v for k, v in body.items() if v is not None}


def _raw(text: str) -> bytes:
    return text.encode()


def _chunked(data: bytes):
    def gen():
        for i in range(0, len(data), 65536):
            yield data[i: i + 65536]
    return gen()


C, CHAT, ADD = "/v1/completions", "/v1/chat/completions", "/v1/adapters"
TOO_BIG = b'{"model": "alpha", "prompt": "' + b"x" * (2 << 20) + b'"}'

# id, method, path, body (dict: JSON; bytes: raw; callable: streamed), status, words the message names
CASES = [
    # sampling fields
    ("seed-2**64", "POST", C, _c(seed=2**64), 400, "seed"),
    ("seed-below-int64", "POST", C, _c(seed=-2**63 - 1), 400, "seed"),
    ("seed-huge", "POST", C, _c(seed=10**40), 400, "seed"),
    ("seed-string", "POST", C, _c(seed="abc"), 400, "seed"),
    ("temperature-negative", "POST", C, _c(temperature=-0.1), 400, "temperature"),
    ("temperature-above-2", "POST", C, _c(temperature=2.5), 400, "temperature"),
    ("temperature-string", "POST", C, _c(temperature="hot"), 400, "temperature"),
    ("temperature-NaN", "POST", C, _raw('{"model": "alpha", "prompt": "hi", "temperature": NaN}'), 400, "NaN"),
    ("top_p-zero", "POST", C, _c(top_p=0), 400, "top_p"),
    ("top_p-above-1", "POST", C, _c(top_p=1.5), 400, "top_p"),
    ("top_p-Infinity", "POST", C, _raw('{"model": "alpha", "prompt": "hi", "top_p": Infinity}'), 400, "Infinity"),
    ("max_tokens-zero", "POST", C, _c(max_tokens=0), 400, "max_tokens"),
    ("max_tokens-huge", "POST", C, _c(max_tokens=10**30), 400, "max_tokens"),
    ("max_tokens-over-cap", "POST", C, _c(max_tokens=65), 400, "max_tokens"),
    ("max_tokens-string", "POST", C, _c(max_tokens="many"), 400, "max_tokens"),
    ("max_tokens-fraction", "POST", C, _c(max_tokens=2.5), 400, "max_tokens"),
    ("n-2", "POST", C, _c(n=2), 400, "n=1"),
    ("best_of-3", "POST", C, _c(best_of=3), 400, "best_of"),
    ("echo", "POST", C, _c(echo=True), 400, "echo"),
    ("suffix", "POST", C, _c(suffix="x"), 400, "suffix"),
    ("logprobs", "POST", C, _c(logprobs=5), 400, "logprobs"),
    ("frequency_penalty", "POST", C, _c(frequency_penalty=0.5), 400, "frequency_penalty"),
    ("presence_penalty", "POST", C, _c(presence_penalty=-1), 400, "presence_penalty"),
    ("stop-five", "POST", C, _c(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("stop-ints", "POST", C, _c(stop=[1, 2]), 400, "stop"),
    ("stream-string", "POST", C, _c(stream="maybe"), 400, "stream"),
    # prompts
    ("prompt-missing", "POST", C, _c(prompt=None), 400, "prompt"),
    ("prompt-empty-string", "POST", C, _c(prompt=""), 400, "prompt"),
    ("prompt-empty-list", "POST", C, _c(prompt=[]), 400, "prompt"),
    ("prompt-empty-token-list", "POST", C, _c(prompt=[[]]), 400, "prompt"),
    ("prompt-negative-token", "POST", C, _c(prompt=[-1]), 400, "prompt"),
    ("prompt-token-vocab", "POST", C, _c(prompt=[49152]), 400, "prompt"),
    ("prompt-token-2**70", "POST", C, _c(prompt=[2**70]), 400, "prompt"),
    ("prompt-int", "POST", C, _c(prompt=12), 400, "prompt"),
    ("prompt-object", "POST", C, _c(prompt={"a": 1}), 400, "prompt"),
    ("prompt-float-tokens", "POST", C, _c(prompt=[1.5]), 400, "prompt"),
    ("prompt-lone-surrogate", "POST", C, _raw('{"model": "alpha", "prompt": "hi \\ud800 there"}'), 400, "prompt"),
    ("prompt-list-lone-surrogate", "POST", C, _raw('{"model": "alpha", "prompt": ["ok", "\\udfff"]}'), 400, "prompt.1"),
    ("prompt-too-many-tokens", "POST", C, _c(prompt=[5] * 300), 413, "at most 200"),
    ("prompt-far-too-long", "POST", C, _c(prompt="x" * 50_000), 413, "prompt"),
    ("prompt-too-many-prompts", "POST", C, _c(prompt=[[5, 6]] * 17), 400, "prompt"),
    # model
    ("model-missing", "POST", C, _c(model=None), 400, "model"),
    ("model-unknown", "POST", C, _c(model="nope"), 404, "'nope' not found"),
    ("model-int", "POST", C, _c(model=5), 400, "model"),
    ("model-lone-surrogate", "POST", C, _raw('{"model": "\\ud83d", "prompt": "hi"}'), 400, "model"),
    ("model-path-like", "POST", C, _c(model="../alpha"), 404, "not found"),
    ("model-corrupt-file", "POST", C, _c(model="corrupt"), 422, "not a readable safetensors"),
    ("model-rank-above-max", "POST", C, _c(model="big"), 422, "--max-rank"),
    ("model-config-is-a-list", "POST", C, _c(model="cfglist"), 422, "cfglist"),
    ("model-config-not-json", "POST", C, _c(model="cfgjunk"), 422, "not valid JSON"),
    ("model-dora", "POST", C, _c(model="dora"), 422, "DoRA"),
    ("model-no-weights", "POST", C, _c(model="noweights"), 422, "adapter_model.safetensors"),
    ("model-nan-weights", "POST", C, _c(model="nan"), 422, "NaN"),
    ("model-overflowing-weights", "POST", C, _c(model="overflow"), 422, "lora_B * scaling reaches"),
    # body
    ("body-invalid-json", "POST", C, _raw('{"model": "alpha", "prompt": '), 400, "not valid JSON"),
    ("body-array", "POST", C, ["not", "an", "object"], 400, "JSON object"),
    ("body-string", "POST", C, "hello", 400, "JSON object"),
    ("body-empty", "POST", C, b"", 400, "not valid JSON"),
    ("body-not-utf8", "POST", C, b"\xff\xfe{}", 400, "not valid JSON"),
    ("body-nested-deep", "POST", C, _raw("[" * 100_000 + "]" * 100_000), 400, "nested too deeply"),
    ("body-too-large", "POST", C, TOO_BIG, 413, "exceeds the limit"),
    ("body-too-large-chunked", "POST", C, lambda: _chunked(TOO_BIG), 413, "exceeds the limit"),
    # chat
    ("chat-messages-missing", "POST", CHAT, _chat(messages=None), 400, "messages"),
    ("chat-messages-empty", "POST", CHAT, _chat(messages=[]), 400, "messages"),
    ("chat-messages-string", "POST", CHAT, _chat(messages="hi"), 400, "messages"),
    ("chat-role-unknown", "POST", CHAT, _chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages.0.role"),
    ("chat-content-int", "POST", CHAT, _chat(messages=[{"role": "user", "content": 5}]), 400, "messages.0.content"),
    ("chat-content-image", "POST", CHAT, _chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]), 400, "messages.0.content"),
    ("chat-message-not-object", "POST", CHAT, _chat(messages=["hi"]), 400, "messages.0"),
    ("chat-tools", "POST", CHAT, _chat(tools=[{"type": "function"}]), 400, "tools"),
    ("chat-max_completion_tokens-zero", "POST", CHAT, _chat(max_completion_tokens=0), 400, "max_completion_tokens"),
    ("chat-lone-surrogate", "POST", CHAT, _raw('{"model": "alpha", "messages": [{"role": "user", '
                                               '"content": "a\\ud800"}]}'), 400, "messages.0.content"),
    ("chat-conversation-too-long", "POST", CHAT, _chat(messages=[{"role": "user", "content": "word " * 400}]),
     413, "at most 200"),
    ("chat-seed-2**64", "POST", CHAT, _chat(seed=2**64), 400, "seed"),
    # adapters
    ("adapter-path-nul", "POST", ADD, {"name": "x1", "path": "alpha\x00/evil"}, 400, "NUL"),
    ("adapter-name-nul", "POST", ADD, {"name": "x\x00y", "path": "alpha"}, 400, "adapter name"),
    ("adapter-path-parent", "POST", ADD, {"name": "x2", "path": "../x"}, 403, "outside the adapters directory"),
    ("adapter-path-absolute", "POST", ADD, {"name": "x3", "path": "/etc"}, 403, "outside the adapters directory"),
    ("adapter-path-too-long", "POST", ADD, {"name": "x4", "path": "a" * 5000}, 400, "cannot be used"),
    ("adapter-path-lone-surrogate", "POST", ADD, _raw('{"name": "x5", "path": "\\ud800"}'), 400, "path"),
    ("adapter-name-empty", "POST", ADD, {"name": "", "path": "alpha"}, 400, "adapter name"),
    ("adapter-name-traversal", "POST", ADD, {"name": "../alpha"}, 400, "adapter name"),
    ("adapter-name-base", "POST", ADD, {"name": "tiny-base", "path": "alpha"}, 400, "base model"),
    ("adapter-name-too-long", "POST", ADD, {"name": "a" * 200, "path": "alpha"}, 400, "adapter name"),
    ("adapter-name-int", "POST", ADD, {"name": 5, "path": "alpha"}, 400, "name"),
    ("adapter-path-int", "POST", ADD, {"name": "x6", "path": 5}, 400, "path"),
    ("adapter-unknown-field", "POST", ADD, {"name": "x7", "path": "alpha", "force": True}, 400, "force"),
    ("adapter-duplicate", "POST", ADD, {"name": "alpha", "path": "alpha"}, 409, "already loaded"),
    ("adapter-missing-dir", "POST", ADD, {"name": "x8", "path": "does-not-exist"}, 404, "adapter_config.json"),
    ("adapter-corrupt", "POST", ADD, {"name": "x9", "path": "corrupt"}, 400, "not a readable safetensors"),
    ("adapter-config-list", "POST", ADD, {"name": "x10", "path": "cfglist"}, 400, "x10"),
    ("adapter-nan", "POST", ADD, {"name": "x11", "path": "nan"}, 400, "NaN"),
    ("adapter-overflow", "POST", ADD, {"name": "x14", "path": "overflow"}, 400, "beyond the range of the serving dtype"),
    ("adapter-dora", "POST", ADD, {"name": "x12", "path": "dora"}, 400, "DoRA"),
    ("adapter-rank-above-max", "POST", ADD, {"name": "x13", "path": "big"}, 400, "--max-rank"),
    ("adapter-delete-unknown", "DELETE", ADD + "/nope", None, 404, "no adapter 'nope'"),
    ("adapter-delete-nul", "DELETE", ADD + "/a%00b", None, 404, "no adapter"),
    # http
    ("auth-missing", "POST", C, GOOD, 401, "API key"),
    ("auth-wrong", "POST", C, GOOD, 401, "API key"),
    ("path-unknown", "GET", "/v1/nothing", None, 404, "Not Found"),
    ("method-wrong", "POST", "/v1/models", {}, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_named_4xx_and_the_server_keeps_serving(env, case):
    live, http, good, catcher = env
    name, method, path, body, status, words = case
    headers = dict(http.headers)
    if name == "auth-missing":
        headers.pop("authorization")
    elif name == "auth-wrong":
        headers["authorization"] = "Bearer nope"
    kw = {}
    if isinstance(body, bytes):
        kw = {"content": body, "headers": {**headers, "content-type": "application/json"}}
    elif callable(body):
        kw = {"content": body(), "headers": {**headers, "content-type": "application/json"}}
    elif body is not None:
        kw = {"content": json.dumps(body).encode(), "headers": {**headers, "content-type": "application/json"}}
    else:
        kw = {"headers": headers}
    before = len(catcher.records)
    r = httpx.request(method, live.url + path, timeout=60, **kw)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert words in message, message
    assert "Traceback" not in r.text
    assert catcher.messages(before) == []
    after = http.post("/v1/completions", json=GOOD)  # the server still serves, unchanged
    assert after.status_code == 200 and after.json()["choices"][0]["text"] == good
    health = http.get("/health").json()
    assert health["status"] == "ok"


def test_corpus_size():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


def test_delete_of_an_adapter_found_in_the_directory_sticks(env):
    """DELETE of an adapter the server found in --adapters DIR: later requests get 404 (it used
    to be found in the directory again), /v1/models leaves it out, and POST brings it back."""
    _, http, good, _ = env
    assert http.post("/v1/completions", json=GOOD).status_code == 200
    assert http.delete("/v1/adapters/alpha").status_code == 200
    for _ in range(2):
        r = http.post("/v1/completions", json=GOOD)
        assert r.status_code == 404 and "'alpha' not found" in r.json()["error"]["message"]
    assert "alpha" not in [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert http.delete("/v1/adapters/alpha").status_code == 404
    assert http.post("/v1/adapters", json={"name": "alpha"}).status_code == 200
    r = http.post("/v1/completions", json=GOOD)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == good
