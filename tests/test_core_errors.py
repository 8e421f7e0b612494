"""Bad input gets a clear error and loses nothing."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lorakit
from lorakit.layers import LoraLayer
from tests import badinput, tiny


def test_unknown_target_lists_close_names():
    model = tiny.make("llama")
    with pytest.raises(ValueError, match=r"'q_prj'.*q_proj"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_prj"]))
    assert not any(isinstance(m, LoraLayer) for m in model.modules())


def test_regex_matching_nothing_lists_module_names():
    model = tiny.make("llama")
    with pytest.raises(ValueError, match="matched no module"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=r"nothing\..*"))


def test_unsupported_module_type_named():
    model = tiny.make("llama")
    with pytest.raises(ValueError, match="input_layernorm.*LlamaRMSNorm"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["input_layernorm"]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(r=0), "r must be"), (dict(lora_alpha=-1), "lora_alpha"), (dict(lora_dropout=1.5), "lora_dropout"),
    (dict(bias="some"), "bias must be"), (dict(init_lora_weights="nope"), "init_lora_weights"),
    (dict(target_modules="(unclosed"), "not a valid regex"), (dict(rank_pattern={"q": 0}), "rank_pattern"),
])
def test_config_validated_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lorakit.LoraConfig(**kwargs)


def test_duplicate_and_bad_adapter_names():
    model = tiny.make("llama")
    lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="already exists"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="letters, digits"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj"]), name="a.b")
    with pytest.raises(KeyError, match="adapters: \\['default'\\]"):
        lorakit.set_adapter(model, "missing")


def _saved(tmp_path, **kw):
    model = tiny.make("llama")
    lorakit.add_adapter(model, lorakit.LoraConfig(init_lora_weights=False, **kw))
    lorakit.save_adapter(model, tmp_path)
    return tmp_path


def test_wrong_base_names_tensor_and_shapes(tmp_path):
    path = _saved(tmp_path, target_modules=["q_proj"])
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    state = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match=r"q_proj\.lora_A\.weight has shape \(8, 64\) but the model expects \(8, 32\)"):
        lorakit.load_adapter(other, path)
    assert not any(isinstance(m, LoraLayer) for m in other.modules()), "a failed load must leave the model as it was"
    assert all(torch.equal(v, state[k]) for k, v in other.state_dict().items())


def test_truncated_weights_file_named(tmp_path):
    path = _saved(tmp_path, target_modules=["q_proj"])
    f = path / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="adapter_model.safetensors: not a readable safetensors file"):
        lorakit.load_adapter(tiny.make("llama"), path)


def test_non_safetensors_file_named(tmp_path):
    path = _saved(tmp_path, target_modules=["q_proj"])
    (path / "adapter_model.safetensors").write_text("this is not a tensor file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        lorakit.load_adapter(tiny.make("llama"), path)


def test_pickle_weights_refused(tmp_path):
    path = _saved(tmp_path, target_modules=["q_proj"])
    (path / "adapter_model.safetensors").rename(path / "adapter_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        lorakit.load_adapter(tiny.make("llama"), path)


def test_unknown_config_keys_warn_and_unsupported_features_refused(tmp_path):
    path = _saved(tmp_path, target_modules=["q_proj"])
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["some_future_key"] = 3
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="some_future_key"):
        lorakit.load_adapter(tiny.make("llama"), path)
    cfg["layer_replication"] = [[0, 2]]
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported PEFT feature layer_replication"):
        lorakit.load_adapter(tiny.make("llama"), path)


def test_safe_merge_refuses_nan_and_keeps_weights():
    model = tiny.make("llama")
    lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    layer = model.model.layers[1].self_attn.v_proj
    with torch.no_grad():
        layer.lora_B["default"].weight[0, 0] = float("nan")
    before = badinput.snapshot(model)
    with pytest.raises(ValueError, match="v_proj gives NaN/inf; weights unchanged"):
        lorakit.merge(model, safe=True)
    badinput.assert_unchanged(model, before)  # bit for bit: q_proj was merged, then rolled back
    assert all(not m.merged_adapters for m in model.modules() if isinstance(m, LoraLayer))


def test_mixed_batch_row_count_mismatch():
    model = tiny.make("llama")
    lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="4 rows but 2 adapters"):
        with lorakit.adapter_per_row(model, ["default", None]):
            model(tiny.batch("llama", rows=4))
