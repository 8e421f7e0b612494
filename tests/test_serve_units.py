"""The serving parts without HTTP: slot pool vs the library's per-row adapters, slot reuse,
adapter files the server refuses, the engine's mixed batch vs one-at-a-time, incremental text
with stop strings, sampling, the registry's path rules, the metrics text."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch
from safetensors.torch import save_file

import lorakit
from lorakit.serve.cache import HostCache, load_host_adapter
from lorakit.serve.engine import Delta, Done, Engine, Failed, Request, prefill_groups
from lorakit.serve.metrics import ServerMetrics
from lorakit.serve.registry import AdapterRegistry, RegistryError
from lorakit.serve.sampling import SamplingParams, make_generator, sample_row
from lorakit.serve.slots import SlotPool
from lorakit.serve.textstream import TextStream
from tests.test_serve_support import ADAPTERS, Offline, tiny_setup, tokenizer


setup = pytest.fixture(scope="module", name="setup")(tiny_setup)


def _pool(base, n_slots=4, max_rank=8):
    model = copy.deepcopy(base)
    pool = SlotPool(model, n_slots, max_rank)
    return model, pool, HostCache(pool.layer_shapes, torch.float32)


@pytest.mark.parametrize("names", [["alpha", "beta", None, "gamma", "delta", "alpha"],
                                   ["alpha", None, "alpha", "alpha"],  # one adapter + base rows
                                   ["gamma", "gamma", "gamma"],  # one adapter, two module kinds only
                                   ["beta", "gamma", "gamma"]])  # mixed, no base row
def test_slot_pool_rows_equal_library_and_one_at_a_time(setup, names):
    base, root = setup
    ids = torch.randint(0, 49152, (len(names), 7), generator=torch.Generator().manual_seed(0))
    reference = copy.deepcopy(base)
    for name in ("beta", "alpha", "gamma", "delta"):  # the all-linear one first: added after another adapter,
        # "all-linear" also matches the inner base_layer of already adapted modules (core targets.py)
        lorakit.load_adapter(reference, root / name, name=name)
    with torch.no_grad(), lorakit.adapter_per_row(reference, names):
        expected = reference(ids).logits
    model, pool, cache = _pool(base)
    slots = {n: pool.acquire(cache.get(n, root / n)) for n in {n for n in names if n}}
    pool.activate([slots[n] if n else -1 for n in names])
    with torch.no_grad():
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    offline = Offline(base, None, root)  # each row alone, through the single-adapter forward
    with torch.no_grad():
        alone = torch.cat([offline.model(n)(ids[i: i + 1]).logits for i, n in enumerate(names)])
    torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-4)
    pool.activate([-1] * len(names))  # base rows only: the plain base model
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("names", [["alpha", None, "beta", "gamma"], ["beta", "beta"], ["gamma", None]])
@pytest.mark.parametrize("tokens", [0, 3])  # decode rows [rows, in] / prefill rows [rows, T, in]
@pytest.mark.parametrize("grad", [False, True])
def test_slot_pool_add_to_equals_reference_lora_rows(setup, names, tokens, grad):
    """The pool's fast per-layer path against ``ops.lora_rows`` on the same slot buffers, for a
    uniform batch, base rows, several slots, a layer no adapter targets, 2-D and 3-D inputs,
    and with autograd on (no in-place add) and off."""
    from lorakit import ops

    base, root = setup
    _, pool, cache = _pool(base)
    slots = {n: pool.acquire(cache.get(n, root / n)) for n in {n for n in names if n}}
    pool.activate([slots[n] if n else -1 for n in names])
    gen = torch.Generator().manual_seed(1)
    for name, layer in pool.layers.items():
        dims = (len(names), tokens, layer.in_features) if tokens else (len(names), layer.in_features)
        x = torch.randn(*dims, generator=gen).requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            base_out = layer.base_layer(x)
            expected = base_out + ops.lora_rows(x, *pool.weights(layer), pool.slot)
            got = pool.add_to(layer, x, layer.base_layer(x))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
        if layer.per_row_adapters is None:  # skipped layer: no adapter of the step targets it
            assert all(float(pool._buffers[id(layer)][2][slots[n]]) == 0.0 for n in slots)
    skipped = [name for name, layer in pool.layers.items() if layer.per_row_adapters is None]
    assert bool(skipped) == (set(names) == {"gamma", None})  # gamma adapts two module kinds only


def test_prefill_groups_bound_padding():
    reqs = [Request(list(range(n)), SamplingParams(), print) for n in (40, 3, 11, 3, 4, 10, 1)]
    groups = prefill_groups(reqs)
    assert [[len(r.prompt_ids) for r in g] for g in groups] == [[1], [3, 3, 4], [10, 11], [40]]
    for g in groups:  # padded tokens stay within 25% of real ones
        assert max(len(r.prompt_ids) for r in g) * len(g) <= 1.25 * sum(len(r.prompt_ids) for r in g)


def test_slot_reuse_is_lru_and_pinned_slots_are_kept(setup):
    base, root = setup
    _, pool, cache = _pool(base, n_slots=2)
    a, b, c = (cache.get(n, root / n) for n in ("alpha", "beta", "gamma"))
    sa, sb = pool.acquire(a), pool.acquire(b)
    assert pool.acquire(c) is None  # both slots pinned by running sequences
    pool.release(sa)
    pool.release(sb)
    sc = pool.acquire(c)  # evicts the least recently released: alpha
    assert sc == sa and pool.misses == 3
    assert pool.acquire(b) == sb and pool.hits == 1  # beta is still there
    pool.release(sc)
    assert pool.acquire(a) == sc and pool.misses == 4
    with pytest.raises(ValueError, match="--max-rank"):
        SlotPool(copy.deepcopy(base), 1, 2).acquire(b)  # rank 8 > 2


def test_slot_write_zero_pads_smaller_ranks(setup):
    base, root = setup
    _, pool, cache = _pool(base, n_slots=1)
    pool.write(0, cache.get("beta", root / "beta"))  # rank 8 everywhere
    pool.write(0, cache.get("gamma", root / "gamma"))  # rank 2 on two module kinds only
    layer = pool.layers["model.layers.0.self_attn.q_proj"]
    a, b, s = pool._buffers[id(layer)]
    assert float(s[0]) == 0.0 and a[0].abs().sum() == 0 and b[0].abs().sum() == 0
    down = pool.layers["model.layers.0.mlp.down_proj"]
    a, b, s = pool._buffers[id(down)]
    assert a[0, 2:].abs().sum() == 0 and b[0, 2:].abs().sum() == 0 and float(s[0]) == 2.0  # b: B transposed


def _adapter_dir(root, name, config_changes=None, tensors=None):
    d = root / name
    d.mkdir()
    config = json.loads((root / "alpha" / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**config, **(config_changes or {})}))
    if tensors is None:
        (d / "adapter_model.safetensors").write_bytes((root / "alpha" / "adapter_model.safetensors").read_bytes())
    else:
        save_file(tensors, str(d / "adapter_model.safetensors"))
    return d


def test_read_adapter_refuses_what_slots_cannot_hold(setup, tmp_path):
    base, root = setup
    shapes = SlotPool(copy.deepcopy(base), 1, 8).layer_shapes
    (tmp_path / "alpha").symlink_to(root / "alpha")
    cases = {
        "dora": ({"use_dora": True}, None, "DoRA"),
        "mts": ({"modules_to_save": ["lm_head"]}, None, "modules_to_save"),
        "lbias": ({"lora_bias": True}, None, "lora_bias"),
        "bias": ({"bias": "all"}, None, "bias='all'"),
        "embed": ({}, {"base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(2, 49152)},
                  "not a LoRA factor of a linear layer"),
        "head": ({}, {"base_model.model.lm_head.lora_A.weight": torch.zeros(2, 64),
                      "base_model.model.lm_head.lora_B.weight": torch.zeros(49152, 2)}, "not a linear layer of the served"),
        "shape": ({}, {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 32),
                       "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 2)},
                  "needs A (r, 64)"),
        "half": ({}, {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 64)},
                 "missing tensor base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"),
        "nan": ({}, {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.full((2, 64), float("nan")),
                     "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 2)}, "NaN"),
    }
    for name, (changes, tensors, words) in cases.items():
        d = _adapter_dir(tmp_path, name, changes, tensors)
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            load_host_adapter(d, shapes, torch.float32)
    d = tmp_path / "corrupt"
    d.mkdir()
    (d / "adapter_config.json").write_text((root / "alpha" / "adapter_config.json").read_text())
    (d / "adapter_model.safetensors").write_bytes(b"garbage" * 20)
    with pytest.raises(ValueError, match="corrupt/adapter_model.safetensors: not a readable safetensors"):
        load_host_adapter(d, shapes, torch.float32)


def _run_engine(base, root, tok, jobs, start_after_submit=True, **engine_kw):
    """Submit ``jobs`` [(adapter or None, prompt_ids, max_tokens)] and return their Done/Failed."""
    model, pool, cache = _pool(base)
    engine = Engine(model, tok, pool, **engine_kw)
    done, events = [None] * len(jobs), [threading.Event() for _ in jobs]

    def emitter(i):
        def emit(event):
            if not isinstance(event, Delta):
                done[i] = event
                events[i].set()
        return emit

    if not start_after_submit:
        engine.start()
    for i, (name, ids, n) in enumerate(jobs):
        adapter = cache.get(name, root / name) if name else None
        engine.submit(Request(ids, SamplingParams(max_tokens=n, temperature=0), emitter(i), adapter))
    if start_after_submit:
        engine.start()
    for e in events:
        assert e.wait(120)
    engine.stop()
    return done, engine


def test_engine_mixed_batch_equals_one_at_a_time_and_generate(setup):
    base, root = setup
    tok = tokenizer()
    prompts = [tok(p).input_ids for p in ("Hello there", "A much longer prompt than the others, to pad", "x", "1 2 3")]
    jobs = list(zip(["alpha", "beta", "gamma", None], prompts, [17, 9, 23, 12]))
    together, engine = _run_engine(base, root, tok, jobs)  # all queued before the first step
    assert engine.metrics.batch_size.render()[-1] == "lorakit_batch_size_count 22"  # 4 rows, then fewer
    assert "lorakit_batch_size_bucket{le=\"4\"} 22" in engine.metrics.batch_size.render()
    assert "lorakit_batch_size_bucket{le=\"2\"} 11" in engine.metrics.batch_size.render()
    offline = Offline(base, tok, root)
    for job, result in zip(jobs, together):
        alone, _ = _run_engine(base, root, tok, [job])
        assert isinstance(result, Done) and result.text == alone[0].text
        assert result.text == tok.decode(offline.ids(*job), skip_special_tokens=True)
        assert result.completion_tokens == job[2] and result.finish_reason == "length"


def test_engine_joins_running_batch_and_bounds_prefill(setup):
    base, root = setup
    tok = tokenizer()
    jobs = [("alpha", tok("one two three").input_ids, 30), ("delta", tok("four").input_ids, 5),
            (None, tok("five six seven eight nine").input_ids, 12)]
    results, _ = _run_engine(base, root, tok, jobs, start_after_submit=False, prefill_tokens_per_step=1)
    offline = Offline(base, tok, root)
    for (name, ids, n), result in zip(jobs, results):
        assert result.text == tok.decode(offline.ids(name, ids, n), skip_special_tokens=True)


def test_engine_rank_above_pool_fails_that_request_only(setup):
    base, root = setup
    tok = tokenizer()
    model, pool, cache = _pool(base, max_rank=4)
    engine = Engine(model, tok, pool)
    got = {}
    ev = threading.Event()
    engine.submit(Request([5, 6], SamplingParams(max_tokens=3, temperature=0),
                          lambda e: (got.setdefault("beta", e), ev.set()) if not isinstance(e, Delta) else None,
                          cache.get("beta", root / "beta")))
    engine.submit(Request([5, 6], SamplingParams(max_tokens=3, temperature=0),
                          lambda e: got.setdefault("alpha", e) if not isinstance(e, Delta) else None,
                          cache.get("alpha", root / "alpha")))
    engine.start()
    ev.wait(30)
    engine.stop(drain_timeout=30)
    assert isinstance(got["beta"], Failed) and got["beta"].status == 422 and "--max-rank" in got["beta"].message
    assert isinstance(got["alpha"], Done)


def test_text_stream_holds_back_stop_prefixes_and_partial_characters():
    tok = tokenizer()
    text = "Hello wörld 😀 and then STOP right there"
    ids = tok(text, add_special_tokens=False).input_ids
    stream = TextStream(tok, stop=("STOP",))
    pieces = [stream.push(t) for t in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == stream.text == "Hello wörld 😀 and then "
    assert stream.stopped
    stream = TextStream(tok, stop=("never",))
    pieces = [stream.push(t) for t in ids] + [stream.finish()]
    assert "".join(pieces) == tok.decode(ids) == text
    stream = TextStream(tok, stop=("ST",))
    out = [stream.push(t) for t in tok(" xx S", add_special_tokens=False).input_ids]
    assert "".join(out) == " xx " and stream.finish() == "S"  # "S" held until it could not be "ST"


def test_sampling_seed_top_p_and_greedy():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    sampled = SamplingParams(temperature=1.0)
    a = [sample_row(logits, sampled, make_generator(3)) for _ in range(5)]
    assert len(set(a)) == 1  # the same seed gives the same token
    draws = {sample_row(logits, sampled, g) for g in [make_generator(s) for s in range(60)]}
    assert draws >= {1, 2}
    narrow = SamplingParams(temperature=1.0, top_p=0.3)
    assert {sample_row(logits, narrow, make_generator(s)) for s in range(30)} == {1}
    assert sample_row(logits, SamplingParams(temperature=0.0), make_generator(None)) == 1
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_registry_names_and_paths(tmp_path, setup):
    _, root = setup
    reg = AdapterRegistry(root, base_name="base")
    assert set(ADAPTERS) <= set(reg.names())
    for bad in ("../x", "a/b", "", ".hidden", "base", "x" * 200):
        with pytest.raises(RegistryError) as err:
            reg.add(bad, "alpha")
        assert err.value.status == 400
    for path in ("../elsewhere", "/etc", str(tmp_path)):
        with pytest.raises(RegistryError, match="outside the adapters directory") as err:
            reg.add("x", path)
        assert err.value.status == 403
    with pytest.raises(RegistryError, match="needs the server to be started with --adapters"):
        AdapterRegistry(None).add("x", "alpha")
    assert reg.add("copy", "alpha") == (root / "alpha").resolve()
    assert reg.lookup("nothing") is None and reg.lookup("../alpha") is None


def test_metrics_text_format():
    m = ServerMetrics()
    m.requests.inc(1, "/v1/completions", "200")
    m.latency.observe(0.3, "chat")
    m.latency.observe(7.0, "chat")
    m.gauge("lorakit_x", "an example", lambda: 3)
    text = m.render()
    assert 'lorakit_requests_total{endpoint="/v1/completions",status="200"} 1' in text
    assert 'lorakit_request_latency_seconds_bucket{endpoint="chat",le="0.5"} 1' in text
    assert 'lorakit_request_latency_seconds_bucket{endpoint="chat",le="+Inf"} 2' in text
    assert 'lorakit_request_latency_seconds_sum{endpoint="chat"} 7.3' in text
    assert "# TYPE lorakit_batch_size histogram" in text and "lorakit_x 3" in text


def test_sliding_window_models_are_refused():
    from transformers import MistralConfig, MistralForCausalLM

    model = MistralForCausalLM(MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=16))
    with pytest.raises(ValueError, match="sliding-window attention"):
        Engine(model, tokenizer(), SlotPool(model, 1, 2))


def test_failing_forward_fails_its_requests_and_engine_goes_on(setup):
    base, root = setup
    tok = tokenizer()
    model, pool, cache = _pool(base)
    real_activate, calls = pool.activate, []

    def flaky(slots):  # the first forward blows up
        calls.append(slots)
        if len(calls) == 1:
            raise RuntimeError("simulated kernel failure")
        real_activate(slots)

    pool.activate = flaky
    engine = Engine(model, tok, pool).start()
    results = []
    for _ in range(2):
        ev = threading.Event()
        engine.submit(Request([5, 6, 7], SamplingParams(max_tokens=3, temperature=0),
                              lambda e, ev=ev: (results.append(e), ev.set()) if not isinstance(e, Delta) else None,
                              cache.get("alpha", root / "alpha")))
        assert ev.wait(30)
    engine.stop()
    assert isinstance(results[0], Failed) and results[0].status == 500 and "simulated" in results[0].message
    assert isinstance(results[1], Done) and results[1].completion_tokens == 3
    assert pool.pins == [0] * pool.n_slots  # the failed request gave its slot back
