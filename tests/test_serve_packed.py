"""Prepacked bf16 GEMMs of the serving fast path (serve/packed.py) against ``F.linear``: the
packed weight alone, a grouped bf16 pool with and without packing through prefill and decode
(base, one adapter, mixed adapters); and the argmax on bf16 logits against fp32 logits
(serve/sampling.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lorakit.serve import packed
from lorakit.serve.cache import HostCache
from lorakit.serve.slots import SlotPool
from tests.test_serve_fastpath import _forward_logits
from tests.test_serve_support import tiny_setup

setup = pytest.fixture(scope="module", name="setup")(tiny_setup)


def _need_packing():
    if not packed.available(torch.zeros(2, 2, dtype=torch.bfloat16)):
        pytest.skip("oneDNN bf16 kernels unavailable on this CPU/torch build (or LORAKIT_PACKED=0): "
                    "the packed path is off there and serving uses F.linear")


@pytest.mark.parametrize("shape", [(32, 1, 64), (3, 7, 64), (5, 64)])
def test_packed_weight_equals_linear(shape):
    """Any leading shape, a strided input, and a 3-row batch after a 32-row one: F.linear's
    values (the same oneDNN bf16 kernel, fp32 accumulation)."""
    _need_packing()
    g = torch.Generator().manual_seed(0)
    w = torch.randn(200, 64, generator=g).bfloat16()
    p = packed.PackedWeight(w)
    x = torch.randn(*shape, generator=g).bfloat16()
    torch.testing.assert_close(p(x).float(), F.linear(x, w).float(), rtol=1e-2, atol=1e-2)
    strided = torch.randn(64, 9, generator=g).bfloat16().t()
    torch.testing.assert_close(p(strided).float(), F.linear(strided, w).float(), rtol=1e-2, atol=1e-2)
    assert p(x).shape == (*shape[:-1], 200) and p(x).dtype == torch.bfloat16


def test_pack_declines_what_it_cannot_pack(monkeypatch):
    assert packed.pack(torch.zeros(4, 4)) is None  # fp32: F.linear (the reference path)
    assert packed.pack(torch.zeros(4, dtype=torch.bfloat16)) is None
    monkeypatch.setenv("LORAKIT_PACKED", "0")
    assert packed.pack(torch.zeros(4, 4, dtype=torch.bfloat16)) is None


def _bf16_pool(base, root, names, env, monkeypatch):
    monkeypatch.setenv("LORAKIT_PACKED", env)
    model = copy.deepcopy(base).to(torch.bfloat16)
    pool = SlotPool(model, 4, 8)
    cache = HostCache(pool.layer_shapes, torch.bfloat16)
    return model, pool, {n: pool.acquire(cache.get(n, root / n)) for n in names}


@pytest.mark.parametrize("rows", [[None, None, None], ["beta"] * 3, ["gamma", None, "gamma"],
                                  ["alpha", "beta", None]])
def test_packed_pool_equals_unpacked_pool(setup, rows, monkeypatch):
    """bf16 prefill + decode logits with every group and the output head packed equal the
    same pool on F.linear (the logits' rounding only)."""
    _need_packing()
    base, root = setup
    names = sorted({n for n in rows if n})
    ids = torch.randint(0, 49152, (len(rows), 6), generator=torch.Generator().manual_seed(3))
    fast = _bf16_pool(base, root, names, "1", monkeypatch)
    plain = _bf16_pool(base, root, names, "0", monkeypatch)
    assert all(g.packed is not None for g in fast[1].groups) and not any(g.packed for g in plain[1].groups)
    assert "forward" in vars(fast[0].get_output_embeddings())  # the head is packed too
    got = _forward_logits(fast[1], fast[0], fast[2], rows, ids)
    want = _forward_logits(plain[1], plain[0], plain[2], rows, ids)
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 0.02 * scale, float((got - want).abs().max())
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_packed_head_keeps_autograd_path(setup, monkeypatch):
    """With autograd on, the packed head runs the module's own F.linear (gradients flow)."""
    _need_packing()
    base, _ = setup
    model = copy.deepcopy(base).to(torch.bfloat16)
    assert packed.pack_output_head(model)
    head = model.get_output_embeddings()
    x = torch.randn(2, head.in_features, dtype=torch.bfloat16, requires_grad=True)
    head(x).float().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_next_tokens_on_bf16_logits_equal_fp32_logits():
    """The argmax on the bf16 logits themselves (no [rows, vocab] fp32 copy) picks what it picks
    on their fp32 widening, ties (first maximum) and a non-finite row included; seeded sampled
    rows draw the same tokens."""
    from lorakit.serve.sampling import SamplingParams, make_generator, next_tokens

    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(6, 300, generator=g) * 4).round().bfloat16()  # coarse: many equal maxima
    logits[2, 7] = float("nan")
    logits[4, 11] = logits[4, 200] = logits[4].max() + 1  # an exact tie between two tokens
    params = [SamplingParams(temperature=0)] * 4 + [SamplingParams(temperature=0.8, top_p=0.9, seed=1)] * 2
    got = next_tokens(logits, params, [make_generator(1) for _ in params])
    want = next_tokens(logits.float(), params, [make_generator(1) for _ in params])
    assert got == want and got[2] == -1 and got[4] == 11


@pytest.mark.slow
def test_smollm2_bf16_greedy_text_is_the_same_packed_and_unpacked(tmp_path, monkeypatch):
    """The real model in bf16, 8 requests in one batch (base rows and one adapter's), 12
    greedy tokens: the packed engine writes the texts the F.linear engine writes."""
    _need_packing()
    import threading

    import lorakit
    from lorakit.models import load_model, load_tokenizer
    from lorakit.serve.engine import Delta, Done, Engine, Request
    from lorakit.serve.sampling import SamplingParams

    base = load_model("smollm2-135m-instruct", dtype=torch.bfloat16).eval()
    tok = load_tokenizer("smollm2-135m-instruct")
    tuned = copy.deepcopy(base)
    lorakit.add_adapter(tuned, lorakit.LoraConfig(r=8, target_modules="all-linear"), adapter_dtype=torch.bfloat16)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    lorakit.save_adapter(tuned, tmp_path / "tuned")
    prompts = [tok(f"Question {i}: name a colour and a {w}.", add_special_tokens=False).input_ids
               for i, w in enumerate(["fruit", "river", "city", "tool", "bird", "song", "tree", "stone"])]
    texts = {}
    for env in ("0", "1"):
        monkeypatch.setenv("LORAKIT_PACKED", env)
        model = copy.deepcopy(base)
        pool = SlotPool(model, 2, 8)
        adapter = HostCache(pool.layer_shapes, torch.bfloat16).get("tuned", tmp_path / "tuned")
        assert all((g.packed is not None) == (env == "1") for g in pool.groups)
        engine = Engine(model, tok, pool, max_batch=8)
        done, left = {}, threading.Semaphore(0)
        for i, ids in enumerate(prompts):
            def emit(event, i=i):
                if not isinstance(event, Delta):
                    done[i] = event
                    left.release()
            engine.submit(Request(ids, SamplingParams(max_tokens=12, temperature=0), emit, adapter if i % 2 else None))
        engine.start()
        for _ in prompts:
            left.acquire()
        engine.stop()
        assert all(isinstance(e, Done) for e in done.values()), done
        texts[env] = [done[i].text for i in range(len(prompts))]
    assert texts["1"] == texts["0"] and len(set(texts["1"])) > 1
