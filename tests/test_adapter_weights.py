"""Weighted multi-adapter use: set_adapter(..., weights=) at run time, merge(..., weights=) and
exact unmerge, negative weights, and the errors (length mismatch, unknown names, re-weighting a
merged adapter). Reference: the same model with each adapter's B scaled by its weight."""

from __future__ import annotations

import copy

import pytest
import torch

import lorakit
from tests import tiny as tiny_text

CONV_TARGETS = ["conv1", "conv2"]


from tests.test_train_fixtures import one_thread  # noqa: E402,F401 (autouse: tiny models run fastest on one thread)


def _two_adapters(kind="llama"):
    model = tiny_text.make(kind)
    targets = "all-linear" if kind == "llama" else CONV_TARGETS
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=targets), name="style")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, lora_alpha=2, target_modules=targets), name="subject")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("style", "subject"):
            for p in lorakit.adapter_state_dict(model, name).values():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _inputs(kind):
    if kind == "llama":
        ids = torch.randint(0, tiny_text.VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
        return lambda m: m(ids).logits
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    return lambda m: m(x)


def _reference(model, weights: dict):
    """A copy whose adapters' B are scaled by their weights, all active at weight 1."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, w in weights.items():
            for key, p in lorakit.adapter_state_dict(ref, name).items():
                if "lora_B" in key:
                    p.mul_(w)
    lorakit.set_adapter(ref, list(weights))
    return ref


@pytest.mark.parametrize("kind", ["llama", "convnet"])
@pytest.mark.parametrize("weights", [(0.7, 0.3), (1.0, -1.0), (-0.5, 0.0)])
def test_run_time_weights_equal_scaled_adapters(kind, weights):
    model, run = _two_adapters(kind), _inputs(kind)
    lorakit.set_adapter(model, ["style", "subject"], weights=list(weights))
    ref = _reference(model, dict(zip(["style", "subject"], weights)))
    with torch.no_grad():
        torch.testing.assert_close(run(model), run(ref), rtol=1e-5, atol=1e-6)
        # back to weight 1 each: the plain sum again
        lorakit.set_adapter(model, ["style", "subject"])
        torch.testing.assert_close(run(model), run(_reference(model, {"style": 1.0, "subject": 1.0})))


def test_weighted_merge_equals_unmerged_and_unmerge_restores():
    model, run = _two_adapters(), _inputs("llama")
    base_weights = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
    with torch.no_grad():
        lorakit.set_adapter(model, ["style", "subject"], weights=[0.7, -0.3])
        unmerged = run(model)
        lorakit.set_adapter(model, ["style", "subject"])  # weights back to 1 before the merge
        lorakit.merge(model, ["style", "subject"], weights=[0.7, -0.3])
        torch.testing.assert_close(run(model), unmerged, rtol=1e-5, atol=1e-5)
        with lorakit.disabled(model):  # disabled unmerges and re-merges with the same weights
            pass
        torch.testing.assert_close(run(model), unmerged, rtol=1e-5, atol=1e-5)
        lorakit.unmerge(model)
        for k, v in model.state_dict().items():
            if k in base_weights:
                torch.testing.assert_close(v, base_weights[k], rtol=0, atol=1e-6)
        torch.testing.assert_close(run(model), unmerged, rtol=1e-5, atol=1e-5)  # weights kept


def test_per_row_batch_uses_the_weights():
    model, run = _two_adapters(), _inputs("llama")
    lorakit.set_adapter(model, ["style", "subject"], weights=[-0.4, 2.0])
    with torch.no_grad():
        with lorakit.adapter_per_row(model, ["style", "subject", None]):
            mixed = run(model)
        lorakit.set_adapter(model, "style", weights=[-0.4])
        only_style = run(model)
        lorakit.set_adapter(model, "subject", weights=2.0)
        only_subject = run(model)
    torch.testing.assert_close(mixed[0], only_style[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], only_subject[1], rtol=1e-5, atol=1e-5)


def test_bad_weights_name_the_problem_and_change_nothing():
    model, run = _two_adapters(), _inputs("llama")
    with torch.no_grad():
        before = run(model)
        with pytest.raises(ValueError, match=r"2 adapters \['style', 'subject'\] but 3 weights"):
            lorakit.set_adapter(model, ["style", "subject"], weights=[0.5, 0.5, 0.5])
        with pytest.raises(KeyError, match=r"no adapter 'styel'; adapters: \['style', 'subject'\]"):
            lorakit.set_adapter(model, ["styel", "subject"], weights=[0.5, 0.5])
        with pytest.raises(KeyError, match="'nope'.*'style', 'subject'"):
            lorakit.merge(model, ["nope"], weights=[1.0])
        with pytest.raises(ValueError, match="finite"):
            lorakit.set_adapter(model, ["style"], weights=[float("nan")])
        with pytest.raises(ValueError, match="1 adapters"):
            lorakit.merge(model, ["style"], weights=[1.0, 2.0])
        torch.testing.assert_close(run(model), before, rtol=0, atol=0)
        lorakit.merge(model, ["style"], weights=[0.5])
        merged = run(model)
        with pytest.raises(ValueError, match="'style' is merged with weight 0.5; unmerge it first"):
            lorakit.set_adapter(model, ["style", "subject"], weights=[0.7, 0.3])
        torch.testing.assert_close(run(model), merged, rtol=0, atol=0)


def test_refused_safe_merge_keeps_the_run_time_weights():
    """merge(..., weights=, safe=True) that the NaN/inf check refuses changes nothing: not the
    base weights, and not the adapters' run-time weights (they were set before the check)."""
    model, run = _two_adapters(), _inputs("llama")
    lorakit.set_adapter(model, ["style", "subject"], weights=[0.7, -0.3])
    base = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
    with torch.no_grad():
        before = run(model)
        with pytest.raises(ValueError, match="gives NaN/inf; weights unchanged"):
            lorakit.merge(model, ["style", "subject"], weights=[1e39, 1.0], safe=True)
        torch.testing.assert_close(run(model), before, rtol=0, atol=0)
    for layer in (m for m in model.modules() if isinstance(m, lorakit.layers.LoraLayer)):
        assert layer.adapter_weights == {"style": 0.7, "subject": -0.3} and not layer.merged_adapters
    for k, v in model.state_dict().items():
        if k in base:
            assert torch.equal(v, base[k]), k


def test_second_all_linear_adapter_joins_the_layers_instead_of_nesting():
    model = _two_adapters()
    for name, module in model.named_modules():
        if isinstance(module, lorakit.layers.LoraLayer):
            assert not isinstance(module.base_layer, lorakit.layers.LoraLayer), name
            assert module.adapter_names == ["style", "subject"], name
