"""diffusers and kohya LoRA files: written by lorakit, read back into fresh models with equal
outputs; converting one into the other and back copies every tensor and alpha; files for
another architecture name the key and the closest modules."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.diffusion import TARGETS, convert_lora_file, detect_format, load_lora_weights, save_lora_weights

pytest.importorskip("diffusers", reason="pip install 'lorakit[diffusion]' (diffusers)")

from lorakit.diffusion import tiny  # noqa: E402


from tests.test_train_fixtures import one_thread  # noqa: E402,F401 (autouse: tiny models run fastest on one thread)

TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def fresh():
    return {"unet": tiny.unet(), "text_encoder": tiny.text_encoder()}


def adapted(seed=0, use_dora=False, use_rslora=False):
    comps = fresh()
    targets = TARGETS["attention"] if use_dora else TARGETS["attention+conv"]  # DoRA: linear only
    unet_cfg = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=targets, rank_pattern={"proj_in": 2, "to_k": 2}, alpha_pattern={"to_out.0": 3},
                                  use_dora=use_dora, use_rslora=use_rslora)
    lorakit.add_adapter(comps["unet"], unet_cfg)
    lorakit.add_adapter(comps["text_encoder"], lorakit.LoraConfig(r=2, lora_alpha=4, target_modules=TE_TARGETS,
                                                                  use_dora=use_dora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in comps.values():
            for key, p in lorakit.adapter_state_dict(model).items():
                p.copy_(p + torch.randn(p.shape, generator=g) * 0.1)
    return comps


def outputs(comps):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 500, (2, 6), generator=g)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 60])
    with torch.no_grad():
        ctx = comps["text_encoder"](ids)[0]
        return ctx, comps["unet"](x, t, encoder_hidden_states=ctx).sample


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
@pytest.mark.parametrize("variant", ["lora", "dora", "rslora"])
def test_file_round_trip_gives_the_same_outputs(fmt, variant, tmp_path):
    comps = adapted(use_dora=variant == "dora", use_rslora=variant == "rslora")
    path = save_lora_weights(tmp_path / ("lora.safetensors" if fmt == "kohya" else "dir"), comps, format=fmt)
    assert detect_format(path) == fmt
    other = fresh()
    load_lora_weights(path, other)
    for a, b in zip(outputs(comps), outputs(other)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_kohya_key_names_and_alpha(tmp_path):
    t = load_file(str(save_lora_weights(tmp_path / "k.safetensors", adapted(), format="kohya")))
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert t[f"{q}.lora_down.weight"].shape == (4, 8) and t[f"{q}.lora_up.weight"].shape == (8, 4)
    assert t[f"{q}.alpha"].item() == 8.0 and f"{q}.dora_scale" not in t
    dora = load_file(str(save_lora_weights(tmp_path / "d.safetensors", adapted(use_dora=True), format="kohya")))
    assert dora[f"{q}.dora_scale"].shape == (8, 1)
    assert t["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha"].item() == 3.0
    assert t["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (2, 8, 1, 1)
    assert t["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (4, 8, 3, 3)
    te = "lora_te_text_model_encoder_layers_1_self_attn_v_proj"  # v4 spelling kept
    assert t[f"{te}.lora_down.weight"].shape == (2, 16) and t[f"{te}.alpha"].item() == 4.0


def test_diffusers_key_names_and_metadata(tmp_path):
    path = save_lora_weights(tmp_path / "d", adapted(), format="diffusers")
    assert path.name == "pytorch_lora_weights.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight" in keys
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight" in keys
    assert '"unet.lora_alpha": 8.0' in meta["lora_adapter_metadata"]


def _same_files(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    assert set(ta) == set(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


@pytest.mark.parametrize("use_dora", [False, True])
def test_conversion_is_lossless_both_ways(use_dora, tmp_path):
    comps = adapted(use_dora=use_dora)
    kohya = save_lora_weights(tmp_path / "a.safetensors", comps, format="kohya")
    diff = convert_lora_file(kohya, tmp_path / "b", to="diffusers", components=fresh())
    back = convert_lora_file(diff, tmp_path / "c.safetensors", to="kohya")
    _same_files(kohya, back)
    diff2 = convert_lora_file(back, tmp_path / "d", to="diffusers", components=fresh())
    _same_files(diff, diff2)
    with safe_open(str(diff), framework="pt") as f1, safe_open(str(diff2), framework="pt") as f2:
        assert f1.metadata() == f2.metadata()
    other = fresh()
    load_lora_weights(diff, other)
    for a, b in zip(outputs(comps), outputs(other)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fp16_file_stays_fp16(tmp_path):
    path = save_lora_weights(tmp_path / "a.safetensors", adapted(), format="kohya")
    half = {k: v.half() if v.dim() else v for k, v in load_file(str(path)).items()}
    save_file(half, str(tmp_path / "h.safetensors"))
    out = convert_lora_file(tmp_path / "h.safetensors", tmp_path / "h", to="diffusers", components=fresh())
    assert all(v.dtype == torch.float16 for v in load_file(str(out)).values())


def test_kohya_file_for_another_architecture_names_key_and_closest_modules(tmp_path):
    # an SDXL-style (SGM U-Net) name, as kohya writes for SDXL: nothing here is called that
    bad = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(2, 8, 1, 1),
           "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(8, 2, 1, 1),
           "lora_unet_input_blocks_4_1_proj_in.alpha": torch.tensor(2.0)}
    save_file(bad, str(tmp_path / "sdxl.safetensors"))
    comps = fresh()
    with pytest.raises(ValueError) as err:
        load_lora_weights(tmp_path / "sdxl.safetensors", comps)
    msg = str(err.value)
    assert "lora_unet_input_blocks_4_1_proj_in.alpha" in msg and "matches no module" in msg
    assert "closest module names" in msg and "proj_in" in msg
    assert not lorakit.adapter_configs(comps["unet"])  # nothing injected


def test_missing_component_and_partial_failure_leave_models_unchanged(tmp_path):
    path = save_lora_weights(tmp_path / "k.safetensors", adapted(), format="kohya")
    unet_only = {"unet": tiny.unet()}
    with pytest.raises(ValueError, match="lora_te_.*text_encoder.*not given"):
        load_lora_weights(path, unet_only)
    assert not lorakit.adapter_configs(unet_only["unet"])
    # a diffusers file whose text-encoder part does not fit: the U-Net part is rolled back
    d = save_lora_weights(tmp_path / "d", adapted(), format="diffusers")
    comps = {"unet": tiny.unet(), "text_encoder": tiny.text_encoder(hidden_size=8)}
    with pytest.raises(ValueError, match="shape"):
        load_lora_weights(d, comps)
    assert not lorakit.adapter_configs(comps["unet"]) and not lorakit.adapter_configs(comps["text_encoder"])


def test_unknown_keys_are_named(tmp_path):
    save_file({"unet.x.lora_down.weight": torch.zeros(1), "unet.y.lora_A.weight": torch.zeros(1)},
              str(tmp_path / "odd.safetensors"))
    with pytest.raises(ValueError, match="unet.x.lora_down.weight is not a diffusers LoRA key"):
        load_lora_weights(tmp_path / "odd.safetensors", fresh())
