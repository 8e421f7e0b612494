"""Parity with diffusers (the real consumer): lorakit's diffusers and kohya files load with
``unet.load_lora_adapter`` / ``pipe.load_lora_weights`` and give the same U-Net and text
encoder outputs (fp32, 1e-5); lorakit's weighted ``set_adapter`` equals diffusers'
``set_adapters(..., adapter_weights=...)``. Tiny SD-shaped pipeline built from configs."""

from __future__ import annotations

import pytest
import torch

import lorakit
from lorakit.diffusion import TARGETS, load_lora_weights, save_lora_weights

pytest.importorskip("diffusers", reason="pip install 'lorakit[diffusion]' (diffusers)")
pytest.importorskip("peft", reason="diffusers' LoRA loaders need peft: pip install peft")

from lorakit.diffusion import tiny  # noqa: E402


from tests.test_train_fixtures import one_thread  # noqa: E402,F401 (autouse: tiny models run fastest on one thread)

TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TOL = dict(rtol=1e-5, atol=1e-5)


def lorakit_models(seed, name="default", alpha_pattern=None):
    comps = {"unet": tiny.unet(), "text_encoder": tiny.text_encoder()}
    return add_random(comps, seed, name, alpha_pattern)


def add_random(comps, seed, name="default", alpha_pattern=None):
    lorakit.add_adapter(comps["unet"], lorakit.LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS["attention+conv"], rank_pattern={"to_k": 2},
        alpha_pattern={"to_v": 1.5} if alpha_pattern is None else alpha_pattern), name=name)
    lorakit.add_adapter(comps["text_encoder"], lorakit.LoraConfig(
        r=2, lora_alpha=3, target_modules=TE_TARGETS), name=name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in comps.values():
            for p in lorakit.adapter_state_dict(model, name).values():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return comps


def run(unet, text_encoder):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 500, (2, 6), generator=g)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 60])
    with torch.no_grad():
        ctx = text_encoder(ids)[0]
        return ctx, unet(x, t, encoder_hidden_states=ctx).sample


def assert_same(ours, theirs):
    base = run(tiny.unet(), tiny.text_encoder())
    for a, b, c in zip(ours, theirs, base):
        assert (a - c).abs().max() > 1e-3  # the adapter does something
        torch.testing.assert_close(a, b, **TOL)


def test_diffusers_file_loads_with_unet_load_lora_adapter(tmp_path):
    ours = lorakit_models(0)
    path = save_lora_weights(tmp_path / "lora", ours, format="diffusers")
    unet = tiny.unet()
    # diffusers reads the metadata (alphas) only on its safetensors path: name the file
    unet.load_lora_adapter(str(path.parent), weight_name=path.name, prefix="unet", adapter_name="x")
    te = ours["text_encoder"]
    assert_same(run(ours["unet"], te), run(unet, te))


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_file_loads_with_pipe_load_lora_weights(fmt, tmp_path):
    # diffusers 0.42.1 drops per-module alphas of kohya attention layers (its alpha_pattern keys
    # keep ".processor.to_v_lora.down.weight"), so the kohya file here has one alpha throughout;
    # lorakit reads per-module kohya alphas (tests/test_diffusion_formats.py).
    ours = lorakit_models(1, alpha_pattern={} if fmt == "kohya" else None)
    path = save_lora_weights(tmp_path / ("lora.safetensors" if fmt == "kohya" else "lora"), ours, format=fmt)
    pipe = tiny.pipeline(tmp_path / "vocab")
    pipe.load_lora_weights(str(path), adapter_name="x")
    assert_same(run(ours["unet"], ours["text_encoder"]), run(pipe.unet, pipe.text_encoder))
    # and the file loads back into lorakit with the same outputs
    again = {"unet": tiny.unet(), "text_encoder": tiny.text_encoder()}
    load_lora_weights(path, again)
    assert_same(run(again["unet"], again["text_encoder"]), run(pipe.unet, pipe.text_encoder))


def test_weighted_set_adapter_equals_diffusers_set_adapters(tmp_path):
    ours = lorakit_models(2, name="style")
    add_random(ours, 3, name="subject")
    pipe = tiny.pipeline(tmp_path / "vocab")
    for name in ("style", "subject"):
        path = save_lora_weights(tmp_path / name, ours, name=name)
        pipe.load_lora_weights(str(path), adapter_name=name)
    for weights in ([0.7, 0.3], [1.0, -1.0]):
        for model in ours.values():
            lorakit.set_adapter(model, ["style", "subject"], weights=weights)
        pipe.set_adapters(["style", "subject"], adapter_weights=weights)
        assert_same(run(ours["unet"], ours["text_encoder"]), run(pipe.unet, pipe.text_encoder))
    # fused: lorakit.merge with weights == diffusers fuse_lora of the weighted adapters
    for model in ours.values():
        lorakit.merge(model, ["style", "subject"], weights=[0.5, -0.25])
    pipe.set_adapters(["style", "subject"], adapter_weights=[0.5, -0.25])
    pipe.fuse_lora(adapter_names=["style", "subject"])
    assert_same(run(ours["unet"], ours["text_encoder"]), run(pipe.unet, pipe.text_encoder))
