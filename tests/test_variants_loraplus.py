"""LoRA+ parameter groups (against PEFT's create_loraplus_optimizer), rsLoRA scaling, and the
LoRA-FA flag (frozen A)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import lorakit
from tests.variants_support import load_base, logits, randomize_adapter, save_tiny_llama, token_ids

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _lr_by_name(model, optimizer, strip=""):
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {n.removeprefix(strip): (lr[id(p)], decay[id(p)]) for n, p in model.named_parameters() if p.requires_grad}


def test_loraplus_groups_match_peft(base_dir):
    from peft.optimizers import create_loraplus_optimizer

    targets = ["q_proj", "v_proj", "embed_tokens"]
    ours = lorakit.add_adapter(load_base(base_dir), lorakit.LoraConfig(r=4, target_modules=targets))
    theirs = peft.get_peft_model(load_base(base_dir), peft.LoraConfig(r=4, target_modules=targets))
    opt_ours = lorakit.loraplus_optimizer(ours, lr=1e-4, loraplus_lr_ratio=16, weight_decay=0.1)
    opt_theirs = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=16,
                                           loraplus_weight_decay=0.1)
    got, want = _lr_by_name(ours, opt_ours), _lr_by_name(theirs, opt_theirs, "base_model.model.")
    assert got == want
    assert got["model.layers.0.self_attn.q_proj.lora_B.default.weight"] == (1.6e-3, 0.1)
    assert got["model.layers.0.self_attn.q_proj.lora_A.default.weight"] == (1e-4, 0.1)
    assert got["model.embed_tokens.lora_embedding_B.default"] == (1e-6, 0.1)


def test_loraplus_puts_dora_magnitude_with_b_and_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    cfg = lorakit.LoraConfig(r=2, target_modules=["0"], use_dora=True, modules_to_save=["1"])
    lorakit.add_adapter(model, cfg)
    opt = lorakit.loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=8, optimizer_cls=torch.optim.SGD, momentum=0.9)
    lrs = {n: lr for n, (lr, _) in _lr_by_name(model, opt).items()}
    assert lrs["0.lora_magnitude_vector.default"] == 8e-3
    assert lrs["0.lora_A.default.weight"] == 1e-3
    assert lrs["1.modules_to_save.default.weight"] == 8e-3  # a norm weight: 1-D, no decay
    assert opt.param_groups[3]["weight_decay"] == 0.0 and opt.defaults["momentum"] == 0.9
    before = model[0].lora_B["default"].weight.detach().clone()
    model(torch.randn(4, 8)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(model[0].lora_B["default"].weight, before)


def test_loraplus_ratio_below_one_is_refused():
    model = lorakit.add_adapter(nn.Sequential(nn.Linear(4, 4)), lorakit.LoraConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match="loraplus_lr_ratio must be >= 1"):
        lorakit.loraplus_optimizer(model, lr=1e-3, loraplus_lr_ratio=0.5)


def test_rslora_scaling_is_alpha_over_sqrt_r_and_matches_peft(base_dir, tmp_path):
    cfg = lorakit.LoraConfig(r=16, lora_alpha=8, target_modules=["q_proj"], use_rslora=True,
                             rank_pattern={"layers.1.self_attn.q_proj": 4}, init_lora_weights=False)
    ours = lorakit.add_adapter(load_base(base_dir), cfg)
    q0, q1 = ours.model.layers[0].self_attn.q_proj, ours.model.layers[1].self_attn.q_proj
    assert q0.scaling["default"] == 8 / math.sqrt(16) and q1.scaling["default"] == 8 / math.sqrt(4)
    x = torch.randn(3, 64)
    with torch.no_grad():
        a, b = q0.lora_A["default"].weight, q0.lora_B["default"].weight
        torch.testing.assert_close(q0(x) - q0.base_layer(x), (x @ a.T @ b.T) * 2.0, rtol=1e-5, atol=1e-5)
    lorakit.save_adapter(ours, tmp_path / "rs")
    theirs = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "rs").eval()
    assert theirs.base_model.model.model.layers[1].self_attn.q_proj.scaling["default"] == 4.0
    torch.testing.assert_close(logits(theirs), logits(ours), rtol=1e-5, atol=1e-5)


# ---- LoRA-FA --------------------------------------------------------------------------------------
def test_lora_fa_freezes_a_and_trains_b(base_dir):
    cfg = lorakit.LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"], lora_fa=True)
    model = lorakit.add_adapter(load_base(base_dir), cfg)
    q = model.model.layers[0].self_attn.q_proj
    emb = model.model.embed_tokens
    assert not q.lora_A["default"].weight.requires_grad and q.lora_B["default"].weight.requires_grad
    # embeddings start with A = 0 and a random B: B is the one kept frozen
    assert emb.lora_embedding_A["default"].requires_grad and not emb.lora_embedding_B["default"].requires_grad
    a0 = q.lora_A["default"].weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(input_ids=token_ids(), labels=token_ids()).loss.backward()
    opt.step()
    assert torch.equal(q.lora_A["default"].weight, a0)
    assert q.lora_B["default"].weight.abs().sum() > 0


def test_lora_fa_saved_only_when_set_and_survives_reload(base_dir, tmp_path):
    plain = lorakit.add_adapter(load_base(base_dir), lorakit.LoraConfig(target_modules=["q_proj"]))
    lorakit.save_adapter(plain, tmp_path / "plain")
    assert "lora_fa" not in json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    fa = lorakit.add_adapter(load_base(base_dir), lorakit.LoraConfig(target_modules=["q_proj"], lora_fa=True))
    randomize_adapter(fa)
    lorakit.save_adapter(fa, tmp_path / "fa")
    again = lorakit.load_adapter(load_base(base_dir), tmp_path / "fa", is_trainable=True)
    q = again.model.layers[0].self_attn.q_proj
    assert not q.lora_A["default"].weight.requires_grad and q.lora_B["default"].weight.requires_grad
    with pytest.warns(UserWarning, match="lora_fa"):  # PEFT reads it as an unknown key, nothing more
        theirs = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "fa").eval()
    torch.testing.assert_close(logits(theirs), logits(again), rtol=1e-5, atol=1e-5)


def _saved_bytes(model, x):
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(n for ptr, n in seen.items() if ptr not in params)


def test_lora_fa_keeps_less_for_the_backward():
    """With A frozen, autograd no longer keeps each layer's (fp32-cast) input for A's gradient."""
    saved = []
    for fa in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64)).bfloat16()
        lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["0", "2"], lora_fa=fa))
        saved.append(_saved_bytes(model, torch.randn(128, 64, dtype=torch.bfloat16, requires_grad=True)))
    assert saved[1] < 0.5 * saved[0]
