"""AdaLoRA as its own adapter type: the layer contract, rank allocation under a budget (step for
step against PEFT's RankAllocator), pruned files, and PEFT parity in both directions."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import lorakit
from lorakit.variants.adalora import SVDLinear
from tests.variants_support import load_base, logits, randomize_adapter, save_tiny_llama, token_ids

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj", "up_proj"]
TOL = dict(rtol=1e-5, atol=1e-5)
SCHEDULE = dict(init_r=6, target_r=3, tinit=1, tfinal=2, deltaT=1, total_step=8, lora_alpha=16)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _ours(base_dir, **kw):
    cfg = lorakit.AdaLoraConfig(target_modules=TARGETS, **{**SCHEDULE, **kw})
    return lorakit.add_adapter(load_base(base_dir), cfg)


def test_zero_init_and_merge_contract(base_dir):
    ref = logits(load_base(base_dir))
    model = _ours(base_dir)
    torch.testing.assert_close(logits(model), ref, rtol=0, atol=0)  # E starts at zero
    randomize_adapter(model, scale=0.3)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, SVDLinear)
    w0 = q.base_layer.weight.detach().clone()
    unmerged = logits(model)
    lorakit.merge(model)
    torch.testing.assert_close(logits(model), unmerged, **TOL)
    lorakit.unmerge(model)
    torch.testing.assert_close(q.base_layer.weight, w0, rtol=0, atol=1e-6)


def test_config_is_validated_by_name():
    with pytest.raises(ValueError, match="total_step must be a positive integer"):
        lorakit.AdaLoraConfig()
    with pytest.raises(ValueError, match="tinit=5 must be below"):
        lorakit.AdaLoraConfig(total_step=6, tinit=5, tfinal=1)


def _train(model, steps, step_fn, lr=0.5):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    ids = token_ids()
    for step in range(steps):
        step_fn(model, ids, opt, step)


def test_allocation_matches_peft_step_for_step(base_dir):
    """Same initial weights, same batches, SGD: the same masks, rank pattern and logits."""
    ours = _ours(base_dir, init_lora_weights=False)
    # task_type routes PEFT's forward through AdaLoraModel.forward, which adds the orthogonal
    # term; without it PEFT silently trains without the regulariser.
    theirs = peft.get_peft_model(load_base(base_dir), peft.AdaLoraConfig(
        target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM", **SCHEDULE))
    peft.set_peft_model_state_dict(theirs, {k: v.detach().clone() for k, v in lorakit.adapter_state_dict(ours).items()})
    ctrl = lorakit.AdaLoraController(ours)

    def ours_step(model, ids, opt, step):
        loss = model(input_ids=ids, labels=ids).loss + ctrl.regularization()
        loss.backward()
        opt.step()
        ctrl.update_and_allocate(step)
        opt.zero_grad()

    def theirs_step(model, ids, opt, step):
        model(input_ids=ids, labels=ids).loss.backward()  # PEFT adds the orthogonal term itself
        opt.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad()

    _train(ours, 8, ours_step)
    _train(theirs, 8, theirs_step)
    theirs.eval()
    pattern = lorakit.adapter_configs(ours)["default"].rank_pattern
    want = {k.replace(".default", ""): v for k, v in theirs.peft_config["default"].rank_pattern.items()}
    assert pattern == want
    assert sum(sum(v) for v in pattern.values()) == 3 * 6  # target_r * layers
    assert any(sum(v) != 3 for v in pattern.values())  # ranks moved between layers
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=1e-4, atol=1e-4)


def test_budget_schedule_is_cubic_and_reaches_target(base_dir):
    ctrl = lorakit.AdaLoraController(_ours(base_dir))
    budgets = [ctrl.budget(step)[0] for step in range(9)]
    assert budgets[0] == budgets[1] == 36 and budgets[-1] == 18
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))


def _allocated(base_dir):
    model = _ours(base_dir, init_lora_weights=False)
    ctrl = lorakit.AdaLoraController(model)

    def step(m, ids, opt, i):
        (m(input_ids=ids, labels=ids).loss + ctrl.regularization()).backward()
        opt.step()
        ctrl.update_and_allocate(i)
        opt.zero_grad()

    _train(model, 8, step, lr=0.1)
    return model


def test_saved_file_is_pruned_and_round_trips(base_dir, tmp_path):
    model = _allocated(base_dir)
    model.eval()
    want = logits(model)
    lorakit.save_adapter(model, tmp_path / "ada")
    pattern = lorakit.adapter_configs(model)["default"].rank_pattern
    tensors = load_file(str(tmp_path / "ada" / "adapter_model.safetensors"))
    key = "model.layers.0.self_attn.q_proj"
    kept = sum(pattern[f"{key}.lora_E"])
    assert tensors[f"base_model.model.{key}.lora_A"].shape == (kept, 64)
    assert tensors[f"base_model.model.{key}.lora_B"].shape == (64, kept)
    assert not any("ranknum" in k for k in tensors)
    ours = lorakit.load_adapter(load_base(base_dir), tmp_path / "ada")
    assert ours.model.layers[0].self_attn.q_proj.r["default"] == kept
    torch.testing.assert_close(logits(ours), want, **TOL)
    theirs = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "ada").eval()
    torch.testing.assert_close(logits(theirs), want, **TOL)


def test_we_load_peft_adalora(base_dir, tmp_path):
    theirs = peft.get_peft_model(load_base(base_dir), peft.AdaLoraConfig(
        target_modules=TARGETS, init_lora_weights=False, **SCHEDULE))
    opt = torch.optim.SGD([p for p in theirs.parameters() if p.requires_grad], lr=0.1)
    ids = token_ids()
    for step in range(8):
        theirs(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        theirs.base_model.update_and_allocate(step)
        opt.zero_grad()
    theirs.eval()
    want = logits(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    ours = lorakit.load_adapter(load_base(base_dir), tmp_path / "peft")
    torch.testing.assert_close(logits(ours), want, **TOL)


def test_controller_needs_gradients(base_dir):
    ctrl = lorakit.AdaLoraController(_ours(base_dir))
    with pytest.raises(RuntimeError, match="call update_and_allocate after backward"):
        ctrl.update_and_allocate(3)
