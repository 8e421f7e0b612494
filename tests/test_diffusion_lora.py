"""LoRA on diffusers models keeps the text-model contract: zero-init == base, merge ==
unmerged, unmerge restores, per-row mixing == one adapter at a time. Tiny U-Net (SD 1.x block
types) and a tiny DiT, both built from configs."""

from __future__ import annotations

import pytest
import torch

import lorakit
from lorakit.diffusion import TARGETS

diffusers = pytest.importorskip("diffusers", reason="pip install 'lorakit[diffusion]' (diffusers)")

from lorakit.diffusion import tiny  # noqa: E402


from tests.test_train_fixtures import one_thread  # noqa: E402,F401 (autouse: tiny models run fastest on one thread)


def _unet_forward(model, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    ctx = torch.randn(batch, 5, 16, generator=g)
    t = torch.tensor([3, 40, 90][:batch])
    return lambda: model(x, t, encoder_hidden_states=ctx).sample


def _dit():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4,
                                 num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
                                 norm_num_groups=4).eval()


def _dit_forward(model, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    t, labels = torch.tensor([3, 40, 90][:batch]), torch.tensor([1, 2, 3][:batch])
    return lambda: model(x, timestep=t, class_labels=labels).sample


CASES = {
    "unet-attention+conv": (tiny.unet, _unet_forward, TARGETS["attention+conv"]),
    "dit-transformer": (_dit, _dit_forward, TARGETS["transformer"]),
}


def _randomize(model, name, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in lorakit.adapter_state_dict(model, name).items():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(params=sorted(CASES))
def case(request):
    build, forward, targets = CASES[request.param]
    return build, forward, targets


def test_targets_cover_attention_proj_and_convs():
    model = tiny.unet()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=TARGETS["attention+conv"]))
    adapted = {n for n, m in model.named_modules() if isinstance(m, lorakit.layers.LoraLayer)}
    for name in ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                 "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
                 "up_blocks.1.attentions.0.proj_in", "down_blocks.0.resnets.0.conv1",
                 "up_blocks.0.resnets.0.conv_shortcut"):
        assert name in adapted
    assert isinstance(model.get_submodule("up_blocks.1.attentions.0.proj_in").base_layer, torch.nn.Conv2d)


def test_zero_init_is_base_and_merge_is_unmerged(case):
    build, forward, targets = case
    model = build()
    run = forward(model)
    with torch.no_grad():
        base = run()
        lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
        assert torch.equal(run(), base)  # B = 0: exactly the base
        _randomize(model, "default", 0)
        unmerged = run()
        assert (unmerged - base).abs().max() > 1e-3
        with lorakit.disabled(model):
            assert torch.equal(run(), base)
        weights = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
        lorakit.merge(model)
        torch.testing.assert_close(run(), unmerged, rtol=1e-5, atol=1e-5)
        lorakit.unmerge(model)
        for k, v in model.state_dict().items():
            if k in weights:
                torch.testing.assert_close(v, weights[k], rtol=0, atol=1e-6)


def test_per_row_mixing_equals_one_adapter_at_a_time(case):
    build, forward, targets = case
    model = build()
    run = forward(model)
    cfg = lorakit.LoraConfig(r=4, lora_alpha=4, target_modules=targets)
    lorakit.add_adapter(model, cfg, name="style")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, lora_alpha=4, target_modules=targets), name="subject")
    _randomize(model, "style", 1)
    _randomize(model, "subject", 2)
    with torch.no_grad():
        per_name = {}
        for name in ("style", "subject"):
            lorakit.set_adapter(model, name)
            per_name[name] = run()
        with lorakit.disabled(model):
            per_name[None] = run()
        with lorakit.adapter_per_row(model, ["style", None, "subject"]):
            mixed = run()
    for row, name in enumerate(["style", None, "subject"]):
        torch.testing.assert_close(mixed[row], per_name[name][row], rtol=1e-5, atol=1e-5)
