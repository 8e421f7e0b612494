"""The serving engine's fast paths against their plain references: grouped layers (q/k/v and
gate/up as one matmul with the step's adapter inside, serve/groups.py) against the per-layer
slot path, the slack KV cache against transformers' concatenating one, and the OpenAI-pool
hygiene of serve/threads.py."""

from __future__ import annotations

import copy
import os
import threading

import pytest
import torch

from lorakit.serve.cache import HostCache
from lorakit.serve.kvbatch import SLACK, SlackLayer, new_cache
from lorakit.serve.slots import SlotPool
from lorakit.serve.threads import _openmp, release_openmp_pool, serial_openmp
from tests.test_serve_support import tiny_setup


setup = pytest.fixture(scope="module", name="setup")(tiny_setup)


def _pools(base, root, names, n_slots=4, dtype=torch.float32):
    """The same adapters in a grouped and a per-layer pool: (model, pool, slots) for each."""
    out = []
    for group in (True, False):
        model = copy.deepcopy(base).to(dtype)
        pool = SlotPool(model, n_slots, 8, group=group)
        cache = HostCache(pool.layer_shapes, dtype)
        out.append((model, pool, {n: pool.acquire(cache.get(n, root / n)) for n in names}))
    return out


def test_groups_are_the_shared_input_layers_and_share_their_storage(setup):
    base, root = setup
    (model, pool, _), (_, plain, _) = _pools(base, root, [])
    block = [[name.rsplit(".", 1)[-1] for name, layer in pool.layers.items() if layer in g.layers]
             for g in pool.groups[:4]]
    assert block == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    assert not plain.groups and all(layer.fast is None for layer in plain.layers.values())
    g = pool.groups[0]
    q = g.layers[0].base_layer.weight
    assert q.data_ptr() == g.ext.data_ptr() and g.ext.shape == (sum(g.outs) + 3 * 8, 64)
    # the stacked rows are the base weights themselves (no copy), the A rows start at zero
    torch.testing.assert_close(g.ext[: g.width], torch.cat([l.base_layer.weight for l in g.layers]))
    assert not g.ext[g.width:].any()


@pytest.mark.parametrize("rows", [["beta"] * 3,  # one all-linear adapter: every group's fused path
                                  ["gamma", None, "gamma"],  # one adapter on o/down only + a base row
                                  ["alpha", "beta", None],  # mixed: stacked base + per-row LoRA
                                  [None, None, None]])
def test_grouped_forward_equals_per_layer_path(setup, rows):
    """Prefill (3-D rows) then decode steps through a KV cache: logits of the grouped model equal
    the per-layer slot path's (fp32, summation order only)."""
    base, root = setup
    names = sorted({n for n in rows if n})
    results = []
    for model, pool, slots in _pools(base, root, names):
        ids = torch.randint(0, 49152, (len(rows), 6), generator=torch.Generator().manual_seed(0))
        cache, logits = new_cache(), []
        with torch.inference_mode():
            pool.activate([slots[n] if n else -1 for n in rows])
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            logits.append(out.logits)
            for _ in range(3):
                out = model(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=cache, use_cache=True)
                logits.append(out.logits)
        results.append(torch.cat(logits, dim=1))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)


def test_group_region_follows_slot_reuse(setup):
    """One slot, reused: the grouped path must drop its copy of the old adapter's factors when
    the slot is overwritten."""
    base, root = setup
    ids = torch.randint(0, 49152, (2, 5), generator=torch.Generator().manual_seed(1))
    models = [copy.deepcopy(base) for _ in range(2)]
    pools = [SlotPool(m, 1, 8, group=g) for m, g in zip(models, (True, False))]
    caches = [HostCache(p.layer_shapes, torch.float32) for p in pools]
    seen = []
    for name in ("beta", "eta", "beta"):  # one slot: each acquisition overwrites it
        step = []
        for model, pool, cache in zip(models, pools, caches):
            slot = pool.acquire(cache.get(name, root / name))
            pool.activate([slot, slot])
            with torch.inference_mode():
                step.append(model(ids).logits)
            pool.release(slot)
        torch.testing.assert_close(step[0], step[1], rtol=1e-4, atol=1e-4)
        seen.append(step[0])
    assert not torch.allclose(seen[0], seen[1])  # the two adapters differ, so the check can fail


def test_slack_layer_appends_like_concatenation():
    layer, ref = SlackLayer(), []
    torch.manual_seed(0)
    first = torch.randn(2, 3, 5, 4)
    k, v = layer.update(first, -first)
    ref.append(first)
    for step in range(SLACK + 3):  # past the spare columns: one regrow
        new = torch.randn(2, 3, 1, 4)
        k, v = layer.update(new, -new)
        ref.append(new)
    torch.testing.assert_close(k, torch.cat(ref, dim=-2), rtol=0, atol=0)
    torch.testing.assert_close(v, -torch.cat(ref, dim=-2), rtol=0, atol=0)
    assert layer.get_seq_length() == 5 + SLACK + 3
    layer.keys = k[:1, :, -4:]  # assignment (BatchKV row selection / trimming) copies with slack
    assert layer.keys.shape == (1, 3, 4, 4) and layer._k.shape[-2] == 4 + SLACK
    cache = new_cache()
    cache.update(first, first, 0)
    assert type(cache.layers[0]) is SlackLayer


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(_openmp() is None or (os.cpu_count() or 1) < 2 or not os.path.isdir("/proc/self/task"),
                    reason="needs Linux, torch's OpenMP runtime and 2+ CPUs")
def test_openmp_pool_release_and_serial_threads():
    """The engine thread must be the only one with an OpenMP pool: ``release_openmp_pool`` ends
    the caller's worker threads, and a ``serial_openmp`` thread runs parallel ops on itself."""
    torch.set_num_threads(2)  # the module's fixture may have set 1 (restored by it)
    big = torch.randn(1500, 1500)
    (big @ big).sum()  # this thread now has a pool
    before = _threads()
    assert release_openmp_pool()
    assert _threads() < before
    counts = {}

    def worker():
        serial_openmp()
        start = _threads()
        half = big.to(torch.bfloat16)  # what an adapter read does, and a bf16 (oneDNN) matmul
        torch.isfinite(big).all(), (half @ half).sum()
        counts.update(start=start, after=_threads(), torch_threads=torch.get_num_threads())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert counts["after"] == counts["start"] and counts["torch_threads"] == 1
    assert torch.get_num_threads() >= 2  # other threads keep their setting
