"""Bad input to the library, table-driven: every call below must fail with an error that names
the offending thing (field, adapter, file, tensor and both shapes) and change nothing else:
the model's tensors bit for bit, its module tree, adapter configs and active set, and the
files on disk (no partial adapter directory, no temp file left behind).

This file: config fields and adapter files (``load_adapter``, ``hotswap``); bad calls are in
tests/test_badinput_calls.py, the shared set-up in tests/badinput_library_support.py.
"""

from __future__ import annotations

import pytest
import torch

import lorakit
from tests.badinput_library_support import (  # noqa: F401 (good, model, template: fixtures)
    A_KEY, B_KEY, CONFIG, Q0, WEIGHTS, _replace_weights, _set, _poke, _weights_dir, _weights_to_bin,
    good, model, refused as _refused, template, with_config, with_files, with_tensors)


# ---- 1. LoraConfig fields: construction and adapter_config.json ----------------------------
FIELDS = [
    ("r", 0), ("r", -1), ("r", 2.5), ("r", "8"), ("r", True), ("r", None),
    ("lora_alpha", 0), ("lora_alpha", -1), ("lora_alpha", "16"), ("lora_alpha", float("nan")),
    ("lora_alpha", float("inf")), ("lora_alpha", True), ("lora_alpha", None),
    ("lora_dropout", "abc"), ("lora_dropout", None), ("lora_dropout", 1.0), ("lora_dropout", -0.1),
    ("lora_dropout", float("nan")), ("lora_dropout", True),
    ("target_modules", 3), ("target_modules", ["q_proj", 3]), ("target_modules", "(unclosed"),
    ("target_modules", [""]), ("target_modules", {"q_proj": 1}),
    ("exclude_modules", 3), ("exclude_modules", "(bad"),
    ("layers_to_transform", -1), ("layers_to_transform", [0, -1]), ("layers_to_transform", "0"),
    ("layers_to_transform", [0.5]), ("layers_to_transform", []), ("layers_to_transform", True),
    ("layers_pattern", 3), ("layers_pattern", [1]),
    ("bias", "some"), ("bias", None), ("lora_bias", "yes"), ("fan_in_fan_out", 1),
    ("use_rslora", "true"), ("use_dora", None), ("inference_mode", 0),
    ("modules_to_save", "classifier"), ("modules_to_save", [1]),
    ("init_lora_weights", "nope"), ("init_lora_weights", 3), ("init_lora_weights", ["x"]),
    ("rank_pattern", {"q_proj": 0}), ("rank_pattern", {"q_proj": 2.5}), ("rank_pattern", {"(": 2}),
    ("rank_pattern", [1]), ("alpha_pattern", {"q_proj": -1}), ("alpha_pattern", {"q_proj": "x"}),
    ("task_type", 3), ("base_model_name_or_path", 3), ("peft_type", "VERA"),
]


@pytest.mark.parametrize("field, value", FIELDS, ids=[f"{f}={v!r}" for f, v in FIELDS])
def test_lora_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"LoraConfig: .*\b{field}\b"):
        lorakit.LoraConfig(**{"target_modules": ["q_proj"], field: value})


OTHER_TYPES = [
    (lorakit.VeraConfig, "r", 0), (lorakit.VeraConfig, "r", "8"), (lorakit.VeraConfig, "vera_dropout", "abc"),
    (lorakit.VeraConfig, "vera_dropout", None), (lorakit.VeraConfig, "vera_dropout", 1.0),
    (lorakit.VeraConfig, "d_initial", "x"), (lorakit.VeraConfig, "target_modules", 3),
    (lorakit.VeraConfig, "bias", "vera_only"), (lorakit.VeraConfig, "save_projection", "yes"),
    (lorakit.AdaLoraConfig, "init_r", "a"), (lorakit.AdaLoraConfig, "beta1", float("nan")),
    (lorakit.AdaLoraConfig, "total_step", None), (lorakit.AdaLoraConfig, "lora_dropout", "abc"),
    (lorakit.AdaLoraConfig, "tinit", 2.5), (lorakit.AdaLoraConfig, "target_modules", 3),
    (lorakit.AdaLoraConfig, "target_r", 0),
]


@pytest.mark.parametrize("cls, field, value", OTHER_TYPES,
                         ids=[f"{c.__name__}-{f}={v!r}" for c, f, v in OTHER_TYPES])
def test_other_adapter_configs_name_the_field(cls, field, value):
    base = {"target_modules": ["q_proj"]} | ({"total_step": 10} if cls is lorakit.AdaLoraConfig else {})
    with pytest.raises(ValueError, match=rf"{cls.__name__}: .*\b{field}\b"):
        cls(**{**base, field: value})


def test_lora_config_unknown_key_named():
    with pytest.raises(TypeError, match="'lora_rank'"):
        lorakit.LoraConfig(lora_rank=8)


FILE_FIELDS = [(f, v) for f, v in FIELDS if f not in ("peft_type", "modules_to_save")]


@pytest.mark.parametrize("field, value", FILE_FIELDS, ids=[f"{f}={v!r}" for f, v in FILE_FIELDS])
def test_adapter_config_file_names_file_and_field(field, value, model, good, tmp_path):
    path = with_config(lambda c: c.update({field: value}))(good, tmp_path)
    _refused(model, tmp_path, lambda: lorakit.load_adapter(model, path, name="new"),
             ValueError, rf"{CONFIG}: .*\b{field}\b")


# ---- 2. load_adapter / hotswap: files ------------------------------------------------------
FILES = {
    "config-json-list": (with_config("[1, 2]"), ValueError, rf"{CONFIG}: holds a JSON list"),
    "config-json-string": (with_config('"lora"'), ValueError, rf"{CONFIG}: holds a JSON str"),
    "config-json-null": (with_config("null"), ValueError, rf"{CONFIG}: holds a JSON NoneType"),
    "config-not-json": (with_config("{r: 8"), ValueError, rf"{CONFIG}: not valid JSON"),
    "config-empty": (with_config(""), ValueError, rf"{CONFIG}: not valid JSON"),
    "config-not-utf8": (with_config(b'{"r": 8, "x": "\xff\xfe"}'), ValueError, rf"{CONFIG}: not UTF-8"),
    "config-peft-type": (with_config(lambda c: c.update(peft_type="IA3")), ValueError, r"peft_type 'IA3'"),
    "config-unsupported-feature": (with_config(lambda c: c.update(layer_replication=[[0, 1]])), ValueError,
                                   "unsupported PEFT feature layer_replication"),
    "config-targets-nothing": (with_config(lambda c: c.update(target_modules=["nope"])), ValueError,
                               r"bad: target_modules=\['nope'\] matched no module"),
    "config-layer-out-of-range": (with_config(lambda c: c.update(layers_to_transform=[0, 7])), ValueError,
                                  r"layers_to_transform: layer\(s\) \[7\] do not exist"),
    "config-layers-pattern-wrong": (with_config(lambda c: c.update(layers_to_transform=[0], layers_pattern="blocks")),
                                    ValueError, r"layers_pattern='blocks'"),
    "config-missing": (with_files(lambda p: (p / CONFIG).unlink()), FileNotFoundError, f"no {CONFIG} in .*bad"),
    "config-is-dir": (with_files(lambda p: ((p / CONFIG).unlink(), (p / CONFIG).mkdir())), ValueError,
                      rf"{CONFIG} is not a file"),
    "weights-missing": (with_files(lambda p: (p / WEIGHTS).unlink()), FileNotFoundError, f"not found: .*{WEIGHTS}"),
    "weights-pickle-only": (with_files(_weights_to_bin), ValueError, "adapter_model.bin \\(pickle\\)"),
    "weights-is-dir": (with_files(_weights_dir), ValueError, f"{WEIGHTS}: not a file"),
    "weights-empty": (with_files(_replace_weights(b"")), ValueError, f"{WEIGHTS}: not a readable safetensors"),
    "weights-garbage": (with_files(_replace_weights(b"not a tensor file at all")), ValueError,
                        f"{WEIGHTS}: not a readable safetensors"),
    "weights-huge-header": (with_files(_replace_weights((2**62).to_bytes(8, "little") + b"{}")), ValueError,
                            f"{WEIGHTS}: not a readable safetensors"),
    "weights-pickle-bytes": (with_files(_replace_weights(b"\x80\x04\x95\x00\x00\x00\x00")), ValueError,
                             f"{WEIGHTS}: not a readable safetensors"),
    "tensor-nan": (with_tensors(_poke(A_KEY, float("nan"))), ValueError, rf"{WEIGHTS}: tensor {A_KEY} holds 1 NaN/inf"),
    "tensor-inf": (with_tensors(_poke(B_KEY, float("inf"))), ValueError, rf"{WEIGHTS}: tensor {B_KEY} holds 1 NaN/inf"),
    "tensor-neg-inf": (with_tensors(_poke(B_KEY, float("-inf"))), ValueError, rf"tensor {B_KEY} holds 1 NaN/inf"),
    "tensor-int": (with_tensors(lambda t: t.update({A_KEY: t[A_KEY].to(torch.int64)})), ValueError,
                   rf"tensor {A_KEY} has dtype torch.int64"),
    "tensor-int8": (with_tensors(lambda t: t.update({B_KEY: t[B_KEY].to(torch.int8)})), ValueError,
                    rf"tensor {B_KEY} has dtype torch.int8"),
    "tensor-bool": (with_tensors(lambda t: t.update({A_KEY: t[A_KEY] > 0})), ValueError,
                    rf"tensor {A_KEY} has dtype torch.bool"),
    "tensor-missing": (with_tensors(lambda t: t.pop(B_KEY) is None), ValueError, rf"missing tensor {B_KEY}"),
    "tensor-unexpected": (with_tensors(_set(f"{Q0}.lora_C.weight", torch.zeros(2))), ValueError,
                          r"1 tensors match no adapted module.*lora_C"),
    "tensor-shape-rank": (with_tensors(_set(A_KEY, torch.zeros(3, 64))), ValueError,
                          rf"tensor {A_KEY} has shape \(3, 64\) but the model expects \(4, 64\)"),
    "tensor-shape-in": (with_tensors(_set(A_KEY, torch.zeros(4, 32))), ValueError,
                        rf"tensor {A_KEY} has shape \(4, 32\) but the model expects \(4, 64\)"),
    "tensor-shape-dims": (with_tensors(_set(B_KEY, torch.zeros(64))), ValueError,
                          rf"tensor {B_KEY} has shape \(64,\) but the model expects \(64, 4\)"),
    "tensor-for-missing-layer": (with_tensors(_set(A_KEY.replace("layers.0", "layers.9"), torch.zeros(4, 64))),
                                 ValueError, r"match no adapted module.*layers\.9"),
}


@pytest.mark.parametrize("case", FILES)
def test_load_adapter_refuses_bad_file(case, model, good, tmp_path):
    make, exc, match = FILES[case]
    path = make(good, tmp_path)
    _refused(model, tmp_path, lambda: lorakit.load_adapter(model, path, name="new"), exc, match)


HOTSWAP = {k: FILES[k] for k in ("config-json-list", "config-not-json", "weights-pickle-only", "weights-garbage",
                                 "tensor-nan", "tensor-int", "tensor-bool", "tensor-missing", "tensor-unexpected",
                                 "tensor-shape-in", "tensor-shape-dims")}
HOTSWAP["tensor-missing"] = (HOTSWAP["tensor-missing"][0], ValueError, rf"same target modules.*{B_KEY}")
HOTSWAP["tensor-unexpected"] = (HOTSWAP["tensor-unexpected"][0], ValueError, r"same target modules.*lora_C")
HOTSWAP["tensor-shape-in"] = (HOTSWAP["tensor-shape-in"][0], ValueError,
                              rf"tensor {A_KEY} has shape \(4, 32\) but the loaded adapter holds \(4, 64\)")
HOTSWAP["tensor-shape-dims"] = (HOTSWAP["tensor-shape-dims"][0], ValueError,
                                rf"tensor {B_KEY} has shape \(64,\) but the loaded adapter holds \(64, 4\)")
HOTSWAP["rank-grows"] = (with_tensors(lambda t: t.update({A_KEY: torch.zeros(6, 64), B_KEY: torch.zeros(64, 6)})),
                         ValueError, rf"tensor {A_KEY} has shape \(6, 64\).*\(4, 64\) \(hot-swap cannot grow a rank\)")


@pytest.mark.parametrize("case", HOTSWAP)
def test_hotswap_refuses_bad_file(case, model, good, tmp_path):
    make, exc, match = HOTSWAP[case]
    path = make(good, tmp_path)
    _refused(model, tmp_path, lambda: lorakit.hotswap(model, path, name="a"), exc, match)


def test_nonfinite_loads_only_with_opt_in(model, good, tmp_path):
    path = FILES["tensor-nan"][0](good, tmp_path)
    lorakit.load_adapter(model, path, name="new", allow_nonfinite=True)
    layer = model.model.layers[0].self_attn.q_proj
    assert int(layer.lora_A["new"].weight.isnan().sum()) == 1
