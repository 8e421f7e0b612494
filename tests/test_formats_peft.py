"""lorakit.formats: the PEFT key grammar, the one config-key rule, the one atomic writer, and
that every writer of adapter directories (save_adapter, the trainer's, the PiSSA/OLoRA
converter) goes through it with the same checks."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.formats import files, peft
from lorakit.train import build
from tests import tiny

Q = "model.layers.0.self_attn.q_proj"


# ---- keys -----------------------------------------------------------------------------------
KEYS = {
    f"base_model.model.{Q}.lora_A.weight": (Q, "lora_A", "weight", 0),
    f"base_model.model.{Q}.lora_B.weight": (Q, "lora_B", "weight", 1),
    f"base_model.model.{Q}.lora_B.bias": (Q, "lora_B", "bias", None),
    "base_model.model.model.embed_tokens.lora_embedding_A": ("model.embed_tokens", "lora_embedding_A", "", 0),
    "base_model.model.model.embed_tokens.lora_embedding_B": ("model.embed_tokens", "lora_embedding_B", "", 1),
    f"base_model.model.{Q}.lora_magnitude_vector": (Q, "lora_magnitude_vector", "", None),
    f"base_model.model.{Q}.lora_E": (Q, "lora_E", "", 0),
    f"base_model.model.{Q}.vera_lambda_b": (Q, "vera_lambda_b", "", None),
    "base_model.model.classifier.modules_to_save.weight": ("classifier.modules_to_save", "", "weight", None),
    "base_model.model.model.norm.bias": ("model.norm", "", "bias", None),
}


@pytest.mark.parametrize("key", KEYS)
def test_parse_key_and_back(key):
    module, kind, param, rank = KEYS[key]
    parsed = peft.parse_key(key)
    assert (parsed.module, parsed.kind, parsed.param) == (module, kind, param)
    assert peft.tensor_key(parsed.module, parsed.suffix) == key
    assert peft.rank_dim(key) == rank


def test_keys_outside_the_model_prefix_are_not_module_keys():
    assert peft.parse_key("base_model.vera_A") is None
    assert peft.parse_key("unet.down.0.lora_A.weight", prefix="").module == "unet.down.0"


def test_group_factors_pairs_modules_and_names_a_missing_factor():
    a, b = torch.zeros(2, 8), torch.zeros(8, 2)
    tensors = {**peft.pair_tensors(peft.tensor_key(Q), a, b, torch.ones(8)),
               "base_model.model.model.norm.bias": torch.zeros(8)}
    (f,) = peft.group_factors(tensors, "src").values()
    assert f.module == Q and f.a is a and f.b is b and not f.embedding and f.magnitude.shape == (8,)
    del tensors[f"base_model.model.{Q}.lora_B.weight"]
    with pytest.raises(ValueError, match=rf"src: missing tensor base_model\.model\.{Q}\.lora_B\.weight"):
        peft.group_factors(tensors, "src")


# ---- adapter_config.json: one rule for every adapter type ---------------------------------------
@pytest.mark.parametrize("load", [lorakit.LoraConfig.from_peft_dict, lorakit.VeraConfig.from_peft_dict],
                         ids=["LORA", "VERA"])
def test_one_config_rule_for_every_adapter_type(load):
    peft_type = "LORA" if load == lorakit.LoraConfig.from_peft_dict else "VERA"
    base = {"peft_type": peft_type, "r": 4, "target_modules": ["q_proj"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # bookkeeping keys and unset unknown keys: silent
        load({**base, "peft_version": "0.99", "auto_mapping": {"x": 1}, "some_future_switch": None,
              "other_future": False}, source="cfg")
    with pytest.warns(UserWarning, match=r"cfg: ignoring unknown keys \['some_future_switch'\]"):
        load({**base, "some_future_switch": True}, source="cfg")
    with pytest.raises(ValueError, match=rf"cfg: peft_type 'IA3' is not '{peft_type}'"):
        load({**base, "peft_type": "IA3"}, source="cfg")


def test_refused_feature_is_named_only_when_switched_on():
    base = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}
    lorakit.LoraConfig.from_peft_dict({**base, "layer_replication": None}, source="cfg")
    with pytest.raises(ValueError, match=r"cfg: unsupported PEFT feature layer_replication=\[\[0, 1\]\]"):
        lorakit.LoraConfig.from_peft_dict({**base, "layer_replication": [[0, 1]]}, source="cfg")


# ---- the atomic writer ------------------------------------------------------------------------
def test_atomic_file_replaces_on_success_and_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    with files.atomic_file(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


@pytest.mark.parametrize("replace", [True, False])
def test_atomic_dir_replace_or_update(tmp_path, replace):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with files.atomic_dir(out, replace=replace) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "a.txt").read_text() == "old" and (out / "keep.txt").exists()
    with files.atomic_dir(out, replace=replace) as tmp:
        (tmp / "a.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "a.txt").read_text() == "new"
    assert (out / "keep.txt").exists() == (not replace)


# ---- every writer of adapter directories goes through formats.peft.write_adapter ------------------
def _model(r=4, seed=0):
    model = tiny.make("llama")
    torch.manual_seed(seed)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=r, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return model


def test_save_into_existing_dir_keeps_other_files_and_a_failed_save_changes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "adapter"
    lorakit.save_adapter(_model(seed=0), out)
    (out / "README.md").write_text("card")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(peft, "write_config", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        lorakit.save_adapter(_model(seed=1), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"], "temp directory left behind"
    monkeypatch.undo()
    lorakit.save_adapter(_model(seed=1), out)
    assert (out / "README.md").read_text() == "card"
    assert (out / peft.WEIGHTS_NAME).read_bytes() != before[peft.WEIGHTS_NAME]


def test_hot_swapped_smaller_rank_cannot_be_saved(tmp_path):
    lorakit.save_adapter(_model(r=2), tmp_path / "r2")
    model = _model(r=4)
    lorakit.hotswap(model, tmp_path / "r2")
    with pytest.raises(ValueError, match=r"lora_A\.weight holds rank 4 at .*q_proj but the adapter config "
                                         r"says 2 .*cannot be saved as a PEFT adapter"):
        lorakit.save_adapter(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_trainer_writer_is_checked_and_atomic(tmp_path):
    model = _model()
    tensors = {n: p.detach().clone() for n, p in model.named_parameters()}
    build.write_adapter(model, tmp_path / "adapter", tensors)
    loaded = lorakit.load_adapter(tiny.make("llama"), tmp_path / "adapter")
    x = tiny.batch("llama")
    torch.testing.assert_close(tiny.run(loaded, x), tiny.run(model, x))
    assert json.loads((tmp_path / "adapter" / peft.CONFIG_NAME).read_text())["inference_mode"] is True
    bad = {n: (t.to(torch.int32) if "lora_A" in n else t) for n, t in tensors.items()}
    with pytest.raises(ValueError, match=r"lora_A\.weight has dtype torch\.int32"):
        build.write_adapter(model, tmp_path / "bad", bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_readers_share_the_value_check(tmp_path):
    lorakit.save_adapter(_model(), tmp_path / "a")
    tensors = load_file(str(tmp_path / "a" / peft.WEIGHTS_NAME))
    key = next(iter(tensors))
    tensors[key] = tensors[key].to(torch.int64)
    save_file(tensors, str(tmp_path / "a" / peft.WEIGHTS_NAME))
    from lorakit.analysis import read_adapter

    with pytest.raises(ValueError, match=rf"tensor {key} has dtype torch\.int64"):
        read_adapter(tmp_path / "a")
