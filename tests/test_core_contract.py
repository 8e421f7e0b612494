"""Contract tests: the table of tiny models x adapter configs (tests/adapter_cases.py: LoRA
layouts, DoRA, VeRA), each checked for the behaviour a user relies on (zero init is a no-op,
merge == unmerged, idempotent merge, exact unmerge, disable, save/load round trip, what
trains, mixed batches)."""

from __future__ import annotations

import copy

import pytest
import torch

import lorakit
from lorakit.layers import LoraLayer
from tests import tiny
from tests.adapter_cases import CASES, MIXED_BATCH_CASES

def adapted(case: str, init=False, name="default"):
    c = CASES[case]
    model = tiny.make(c.kind)
    base = copy.deepcopy(model)
    lorakit.add_adapter(model, c.ours(init), name=name)
    if c.fields.get("modules_to_save") and not init:  # make the trained copy differ from the original
        with torch.no_grad():
            for p in model.get_submodule("classifier").modules_to_save[name].parameters():
                p.add_(0.5)
    return c.kind, model, base


@pytest.mark.parametrize("case", CASES)
def test_zero_init_equals_base(case):
    kind, model, base = adapted(case, init=True)
    x = tiny.batch(kind)
    assert torch.equal(tiny.run(model, x), tiny.run(base, x))


@pytest.mark.parametrize("case", CASES)
def test_merge_matches_unmerged_and_is_idempotent_and_reversible(case):
    kind, model, base = adapted(case)
    x = tiny.batch(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y = tiny.run(model, x)
    assert not torch.allclose(y, tiny.run(base, x), atol=1e-4), "adapter must change the output"
    lorakit.merge(model)
    merged_state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.testing.assert_close(tiny.run(model, x), y, atol=1e-5, rtol=1e-5)
    lorakit.merge(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, merged_state[k]), f"second merge changed {k}"
    lorakit.unmerge(model)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0, msg=f"unmerge did not restore {k}")
    torch.testing.assert_close(tiny.run(model, x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_disabled_equals_base_and_merge_and_unload(case):
    kind, model, base = adapted(case)
    x = tiny.batch(kind)
    y = tiny.run(model, x)
    with lorakit.disabled(model):
        torch.testing.assert_close(tiny.run(model, x), tiny.run(base, x), atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny.run(model, x), y)
    lorakit.merge_and_unload(model)
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert type(model) is type(base)
    torch.testing.assert_close(tiny.run(model, x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip(case, tmp_path):
    kind, model, base = adapted(case)
    x = tiny.batch(kind)
    y = tiny.run(model, x)
    lorakit.save_adapter(model, tmp_path)
    assert (tmp_path / "adapter_config.json").exists()
    assert (tmp_path / "adapter_model.safetensors").exists()
    lorakit.load_adapter(base, tmp_path, name="loaded")
    assert torch.equal(tiny.run(base, x), y)
    saved = lorakit.adapter_state_dict(model)
    loaded = lorakit.adapter_state_dict(base, "loaded")
    assert saved.keys() == loaded.keys()
    for k in saved:
        assert torch.equal(saved[k], loaded[k]), k


@pytest.mark.parametrize("case", CASES)
def test_only_adapter_params_train(case):
    kind, model, _ = adapted(case)
    cfg = CASES[case].fields
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    for n in trainable:
        ok = "lora_" in n or ".modules_to_save." in n or ".vera_lambda_" in n
        if cfg.get("bias") == "all":
            ok = ok or n.endswith("bias")
        if cfg.get("bias") == "lora_only":
            ok = ok or n.endswith("base_layer.bias")
        assert ok, f"{n} should be frozen"
    lora_params = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert lora_params <= trainable
    t, total = lorakit.trainable_parameters(model)
    assert t == sum(p.numel() for p in model.parameters() if p.requires_grad) and total > t


@pytest.mark.parametrize("case", MIXED_BATCH_CASES)
def test_mixed_batch_equals_each_row_alone(case):
    kind, model, base = adapted(case, name="a")
    torch.manual_seed(5)
    lorakit.add_adapter(model, CASES[case].ours(init=False), name="b")
    x = tiny.batch(kind, rows=4)
    names = ["a", "b", None, "a"]
    with lorakit.adapter_per_row(model, names):
        mixed = tiny.run(model, x)
    for i, name in enumerate(names):
        if name is None:
            with lorakit.disabled(model):
                alone = tiny.run(model, x[i:i + 1])
        else:
            lorakit.set_adapter(model, name)
            alone = tiny.run(model, x[i:i + 1])
        torch.testing.assert_close(mixed[i:i + 1], alone, atol=1e-5, rtol=1e-5)


def test_multiple_active_adapters_sum():
    _, model, base = adapted("llama-qv", name="a")
    torch.manual_seed(3)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False), name="b")
    x = tiny.batch("llama")
    lorakit.set_adapter(model, ["a", "b"])
    both = tiny.run(model, x)
    lorakit.merge(model)
    torch.testing.assert_close(tiny.run(model, x), both, atol=1e-5, rtol=1e-5)
    lorakit.unmerge(model)
    lorakit.delete_adapter(model, "b")
    assert lorakit.active_adapters(model) == ["a"]
    lorakit.set_adapter(model, "a")
    assert not torch.allclose(tiny.run(model, x), both)


def test_hotswap_smaller_rank_in_place(tmp_path):
    _, model, base = adapted("llama-all-linear-rslora")
    other = copy.deepcopy(base)
    torch.manual_seed(11)
    lorakit.add_adapter(other, CASES["llama-all-linear-rslora"].ours(init=False, r=4))
    lorakit.save_adapter(other, tmp_path)
    x = tiny.batch("llama")
    layer_ids = {n: id(m) for n, m in model.named_modules()}
    lorakit.hotswap(model, tmp_path)
    assert {n: id(m) for n, m in model.named_modules()} == layer_ids, "hotswap must not replace modules"
    torch.testing.assert_close(tiny.run(model, x), tiny.run(other, x), atol=1e-5, rtol=1e-5)


def test_unmerge_exact_for_dtype_bf16():
    kind, model, _ = adapted("llama-qv")
    model.to(torch.bfloat16)
    x = tiny.batch(kind)
    y = tiny.run(model, x)
    lorakit.merge(model, safe=True)
    torch.testing.assert_close(tiny.run(model, x), y, atol=0.1, rtol=0.05)
