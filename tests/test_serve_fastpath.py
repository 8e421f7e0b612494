"""The serving engine's fast paths against their plain references: grouped layers (q/k/v and
gate/up as one matmul with the step's adapter inside, serve/groups.py) against the per-layer
slot path, the C++ per-row kernels (serve/kernels.py) against exact products and the batched
matmul path, the slack KV cache against transformers' concatenating one, and the OpenMP-pool
hygiene of serve/threads.py."""

from __future__ import annotations

import copy
import os
import shutil
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


def _forward_logits(pool, model, slots, rows, ids):
    """Logits of a prefill and three decode steps (the same tokens each time)."""
    kv, logits = new_cache(), []
    with torch.inference_mode():
        pool.activate([slots[n] if n else -1 for n in rows])
        out = model(input_ids=ids, past_key_values=kv, use_cache=True)
        logits.append(out.logits)
        for _ in range(3):
            out = model(input_ids=ids[:, -1:], past_key_values=kv, use_cache=True)
            logits.append(out.logits)
    return torch.cat(logits, dim=1).float()


def test_groups_are_the_shared_input_layers_and_share_their_storage(setup):
    base, root = setup
    (model, pool, _), (_, plain, _) = _pools(base, root, [])
    block = [[name.rsplit(".", 1)[-1] for name, layer in pool.layers.items() if layer in g.layers]
             for g in pool.groups[:4]]
    assert block == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    assert not plain.groups and all(layer.fused_forward is None for layer in plain.layers.values())
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
    ids = torch.randint(0, 49152, (len(rows), 6), generator=torch.Generator().manual_seed(0))
    results = [_forward_logits(pool, model, slots, rows, ids) for model, pool, slots in _pools(base, root, names)]
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
    the caller's worker threads, and a ``serial_openmp`` thread runs parallel ops on itself.
    scikit-learn is imported first: it maps a vendored libgomp of its own, which must not be
    the runtime paused (the suite imports it in other tests, and so does `lorakit ui`)."""
    import sklearn.datasets  # noqa: F401  (loads sklearn's libgomp; scikit-learn is in lorakit[dev])

    _openmp.cache_clear()
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


# ---- C++ per-row kernels (serve/kernels.py) ------------------------------------------------
def _kernels():
    from lorakit.serve import kernels

    module = kernels.load()
    if module is None:
        # a machine with a compiler and ninja must build them: do not hide a broken build
        assert not (shutil.which("c++") and shutil.which("ninja")), "the C++ kernels failed to build"
        pytest.skip("no C++ compiler / ninja: the pool uses batched matmuls")
    return module


@pytest.mark.parametrize("in_f,out_f,rank,r_max", [(64, 32, 8, 8), (70, 300, 3, 8), (576, 1536, 16, 16)])
def test_kernels_equal_exact_per_row_lora(in_f, out_f, rank, r_max):
    """shrink + expand_add against the fp32 product on the same bf16 numbers: base rows (-1)
    untouched, ranks below r_max, input widths not a multiple of 16, outputs over one 256
    chunk, rows of a strided output (a view into a wider tensor, as a layer group's split)."""
    k = _kernels()
    gen = torch.Generator().manual_seed(0)
    n_slots, rows = 5, 7
    a = torch.randn(n_slots, r_max, in_f, generator=gen).bfloat16()
    bt = torch.randn(n_slots, r_max, out_f, generator=gen).bfloat16()
    scale = torch.tensor([0.5, 2.0, 1.0, 0.25, 3.0]).bfloat16()
    slot = torch.tensor([3, -1, 0, 3, 4, 1, -1])
    x = torch.randn(rows, in_f, generator=gen).bfloat16()
    wide = torch.randn(rows, out_f + 10, generator=gen).bfloat16()
    wide_before = wide.clone()
    out = wide[:, 5: 5 + out_f]
    before = out.clone()
    h = k.shrink(x, a, slot, rank)
    k.expand_add(out, h, bt, slot, scale, rank)
    safe = slot.clamp(min=0)
    exact_h = torch.einsum("ni,nri->nr", x.float(), a.float()[safe, :rank])
    exact = torch.einsum("nr,nro->no", exact_h, bt.float()[safe, :rank]) * scale.float()[safe, None]
    exact = torch.where((slot >= 0)[:, None], before.float() + exact, before.float())
    torch.testing.assert_close(h[slot >= 0], exact_h[slot >= 0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out.float(), exact, rtol=1e-2, atol=1e-2)  # one bf16 rounding of the sum
    assert torch.equal(out[slot < 0], before[slot < 0])
    # the columns around the view (a group's other members) are not written
    assert torch.equal(wide[:, :5], wide_before[:, :5]) and torch.equal(wide[:, 5 + out_f:], wide_before[:, 5 + out_f:])
    with pytest.raises(RuntimeError, match="bfloat16"):
        k.shrink(x.float(), a, slot, rank)
    with pytest.raises(RuntimeError, match="out of range"):
        k.shrink(x, a, torch.full((rows,), n_slots), rank)


@pytest.mark.parametrize("rows", [["alpha", "beta", None, "delta"], ["beta", "eta", "eta"]])
def test_bf16_mixed_forward_with_kernels_is_as_close_to_fp32_as_batched_matmuls(setup, rows):
    """A bf16 model through prefill and decode with mixed adapters: the kernel path (fp32
    accumulation) and the gather + batched matmul path (bf16 intermediates) against the same
    model in fp32 on the same bf16-rounded numbers. Base rows are bit-equal across paths; the
    kernel's error is no larger than the batched matmuls'."""
    _kernels()
    base, root = setup
    names = sorted({n for n in rows if n})
    model = copy.deepcopy(base).to(torch.bfloat16)
    pool = SlotPool(model, 4, 8)
    cache = HostCache(pool.layer_shapes, torch.bfloat16)
    slots = {n: pool.acquire(cache.get(n, root / n)) for n in names}
    assert pool._kernels is not None
    ids = torch.randint(0, 49152, (len(rows), 6), generator=torch.Generator().manual_seed(2))
    with_kernels = _forward_logits(pool, model, slots, rows, ids)
    pool._kernels = None
    batched = _forward_logits(pool, model, slots, rows, ids)

    model32 = copy.deepcopy(base).to(torch.bfloat16).float()
    pool32 = SlotPool(model32, 4, 8)
    cache32 = HostCache(pool32.layer_shapes, torch.float32)
    slots32 = {n: pool32.acquire(cache32.get(n, root / n)) for n in names}
    for layer in pool32.layers.values():  # the bf16 pool's numbers, held in fp32
        for t in pool32.buffers(layer)[:2]:
            t.copy_(t.bfloat16().float())
    for group in pool32.groups:
        group.region = None
    exact = _forward_logits(pool32, model32, slots32, rows, ids)

    err_k = (with_kernels - exact).abs().amax(dim=(1, 2))
    err_b = (batched - exact).abs().amax(dim=(1, 2))
    base_rows = [i for i, n in enumerate(rows) if n is None]
    assert torch.equal(with_kernels[base_rows], batched[base_rows])
    assert (err_k <= err_b * 1.25 + 1e-3).all(), (err_k, err_b)
    assert float(err_k.max()) < 0.1 * float(exact.abs().max()), (err_k, exact.abs().max())
