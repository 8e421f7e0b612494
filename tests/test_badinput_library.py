"""Bad input to the library, table-driven: every call below must fail with an error that names
the offending thing (field, adapter, file, tensor and both shapes) and change nothing else:
the model's tensors bit for bit, its module tree, adapter configs and active set, and the
files on disk (no partial adapter directory, no temp file left behind).
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.layers import LoraLayer
from tests import badinput, tiny

Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
A_KEY, B_KEY = f"{Q0}.lora_A.weight", f"{Q0}.lora_B.weight"
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


# ---- fixtures: a template model (deep-copied per case) and a saved adapter ------------------
@pytest.fixture(scope="module")
def template():
    """Tiny Llama with adapter ``a`` (q, v; active) and ``b`` (all-linear, inactive)."""
    model = tiny.make("llama")
    torch.manual_seed(0)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False), name="a")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False),
                        name="b")
    return model


@pytest.fixture(scope="module")
def good(tmp_path_factory, template):
    """A saved copy of adapter ``a`` (r=4 on q_proj, v_proj)."""
    path = tmp_path_factory.mktemp("good") / "a"
    lorakit.save_adapter(template, path, name="a")
    return path


@pytest.fixture
def model(template):
    return copy.deepcopy(template)


def _copy(good, tmp_path, name="bad"):
    dst = tmp_path / name
    shutil.copytree(good, dst)
    return dst


def with_config(edit):
    """A copy of the good adapter whose adapter_config.json is ``edit(dict)`` (or raw text/bytes)."""
    def make(good, tmp_path):
        path = _copy(good, tmp_path)
        if callable(edit):
            cfg = json.loads((path / CONFIG).read_text())
            new = edit(cfg)
            (path / CONFIG).write_text(json.dumps(cfg if new is None else new))
        elif isinstance(edit, bytes):
            (path / CONFIG).write_bytes(edit)
        else:
            (path / CONFIG).write_text(edit)
        return path
    return make


def with_tensors(edit):
    """A copy of the good adapter whose tensors are ``edit(dict)`` (edited in place or returned)."""
    def make(good, tmp_path):
        path = _copy(good, tmp_path)
        tensors = load_file(str(path / WEIGHTS))
        tensors = edit(tensors) or tensors
        save_file(tensors, str(path / WEIGHTS))
        return path
    return make


def with_files(edit):
    def make(good, tmp_path):
        path = _copy(good, tmp_path)
        edit(path)
        return path
    return make


def _set(key, value):
    def edit(t):
        t[key] = value
    return edit


def _poke(key, value):
    def edit(t):
        t[key] = t[key].clone()
        t[key].view(-1)[3] = value
    return edit


def _replace_weights(content: bytes):
    def edit(path):
        (path / WEIGHTS).write_bytes(content)
    return edit


def _weights_to_bin(path):
    (path / WEIGHTS).rename(path / "adapter_model.bin")


def _weights_dir(path):
    (path / WEIGHTS).unlink()
    (path / WEIGHTS).mkdir()


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


# ---- 3. calls with bad names and arguments --------------------------------------------------
def _cfg(**kw):
    return lorakit.LoraConfig(**{"target_modules": ["q_proj"], **kw})


def _mutated(**changes):
    cfg = _cfg()
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def _nan_b(model):
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.lora_B["a"].weight[0, 0] = float("nan")


def _merged(model):
    lorakit.merge(model, ["a"])


CALLS = {
    # add_adapter
    "add-duplicate-name": (None, lambda c: lorakit.add_adapter(c.m, _cfg(), name="a"), ValueError,
                           r"adapter 'a' already exists; existing adapters: \['a', 'b'\]"),
    "add-name-dot": (None, lambda c: lorakit.add_adapter(c.m, _cfg(), name="x.y"), ValueError, r"adapter name 'x\.y'"),
    "add-name-empty": (None, lambda c: lorakit.add_adapter(c.m, _cfg(), name=""), ValueError, r"adapter name ''"),
    "add-name-slash": (None, lambda c: lorakit.add_adapter(c.m, _cfg(), name="x/y"), ValueError, r"adapter name 'x/y'"),
    "add-name-none": (None, lambda c: lorakit.add_adapter(c.m, _cfg(), name=None), ValueError, r"adapter name None"),
    "add-name-int": (None, lambda c: lorakit.add_adapter(c.m, _cfg(), name=3), ValueError, r"adapter name 3"),
    "add-config-dict": (None, lambda c: lorakit.add_adapter(c.m, {"r": 8}), TypeError, r"config must be a LoraConfig.*dict"),
    "add-adapter-dtype-int": (None, lambda c: lorakit.add_adapter(c.m, _cfg(), name="n", adapter_dtype=torch.int8),
                              ValueError, r"adapter_dtype must be a floating-point torch.dtype, got torch.int8"),
    "add-target-typo": (None, lambda c: lorakit.add_adapter(c.m, _cfg(target_modules=["q_prj"]), name="n"), ValueError,
                        r"'q_prj' matched no module; close module names: \['q_proj'"),
    "add-target-one-of-two": (None, lambda c: lorakit.add_adapter(c.m, _cfg(target_modules=["q_proj", "zz"]), name="n"),
                              ValueError, r"'zz' matched no module"),
    "add-regex-nothing": (None, lambda c: lorakit.add_adapter(c.m, _cfg(target_modules=r"nothing\..*"), name="n"),
                          ValueError, r"target_modules='nothing\\\\\..\*' matched no module"),
    "add-base-layer-target": (None, lambda c: lorakit.add_adapter(c.m, _cfg(target_modules=["base_layer"]), name="n"),
                              ValueError, r"'base_layer' matched no module"),
    "add-unsupported-type": (None, lambda c: lorakit.add_adapter(c.m, _cfg(target_modules=["input_layernorm"]), name="n"),
                             ValueError, r"input_layernorm' is a LlamaRMSNorm"),
    "add-exclude-everything": (None, lambda c: lorakit.add_adapter(c.m, _cfg(target_modules="all-linear",
                                                                            exclude_modules=".*"), name="n"),
                               ValueError, r"target_modules='all-linear' matched no module"),
    "add-layer-out-of-range": (None, lambda c: lorakit.add_adapter(c.m, _cfg(layers_to_transform=[5]), name="n"),
                               ValueError, r"layers_to_transform: layer\(s\) \[5\] do not exist; .* layers 0\.\.1"),
    "add-layer-partly-out-of-range": (None, lambda c: lorakit.add_adapter(c.m, _cfg(layers_to_transform=[0, 7]), name="n"),
                                      ValueError, r"layers_to_transform: layer\(s\) \[7\] do not exist"),
    "add-layers-pattern-missing": (None, lambda c: lorakit.add_adapter(
        c.m, _cfg(layers_to_transform=[0], layers_pattern="blocks"), name="n"), ValueError, r"layers_pattern='blocks'"),
    "add-modules-to-save-missing": (None, lambda c: lorakit.add_adapter(c.m, _cfg(modules_to_save=["nohead"]), name="n"),
                                    ValueError, r"modules_to_save entry 'nohead' matched no module"),
    "add-vera-beside-lora": (None, lambda c: lorakit.add_adapter(c.m, lorakit.VeraConfig(r=4, target_modules=["q_proj"]),
                                                                 name="n"), ValueError, r"holds \['LORA'\] adapters"),
    "add-config-mutated": (None, lambda c: lorakit.add_adapter(c.m, _mutated(r=0), name="n"), ValueError,
                           r"LoraConfig: r must be a positive integer, got 0"),
    "add-config-mutated-dropout": (None, lambda c: lorakit.add_adapter(c.m, _mutated(lora_dropout="x"), name="n"),
                                   ValueError, r"lora_dropout must be a number"),
    # set_adapter / delete_adapter
    "set-unknown": (None, lambda c: lorakit.set_adapter(c.m, "zz"), KeyError, r"no adapter 'zz'; adapters: \['a', 'b'\]"),
    "set-unknown-in-list": (None, lambda c: lorakit.set_adapter(c.m, ["a", "zz"]), KeyError, r"no adapter 'zz'"),
    "set-int": (None, lambda c: lorakit.set_adapter(c.m, 3), TypeError, r"adapter name or a list of names, got 3"),
    "set-none-in-list": (None, lambda c: lorakit.set_adapter(c.m, ["a", None]), TypeError, r"strings, got None"),
    "delete-unknown": (None, lambda c: lorakit.delete_adapter(c.m, "zz"), KeyError, r"no adapter 'zz'"),
    "delete-merged": (_merged, lambda c: lorakit.delete_adapter(c.m, "a"), ValueError,
                      r"adapter 'a' is merged into .*q_proj.*unmerge it before deleting it"),
    # merge
    "merge-unknown": (None, lambda c: lorakit.merge(c.m, ["zz"]), KeyError, r"no adapter 'zz'"),
    "merge-unknown-safe": (None, lambda c: lorakit.merge(c.m, ["a", "zz"], safe=True), KeyError, r"no adapter 'zz'"),
    "merge-int": (None, lambda c: lorakit.merge(c.m, 3), TypeError, r"adapter_names must be a list"),
    "merge-nan-safe": (_nan_b, lambda c: lorakit.merge(c.m, safe=True), ValueError,
                       r"merging adapter 'a' into model.layers.1.self_attn.v_proj gives NaN/inf; weights unchanged"),
    "merge-and-unload-nan-safe": (_nan_b, lambda c: lorakit.merge_and_unload(c.m, safe=True), ValueError,
                                  r"v_proj gives NaN/inf"),
    # save_adapter
    "save-unknown": (None, lambda c: lorakit.save_adapter(c.m, c.tmp / "out", name="zz"), KeyError, r"no adapter 'zz'"),
    "save-below-file": (None, lambda c: lorakit.save_adapter(c.m, c.tmp / "afile" / "out", name="a"), ValueError,
                        r"adapter directory .*afile/out cannot be created \(below .*afile, which is a regular file\)"),
    "save-onto-file": (None, lambda c: lorakit.save_adapter(c.m, c.tmp / "afile", name="a"), ValueError,
                       r"adapter directory .*afile is a regular file"),
    "save-weights-path-is-dir": (None, lambda c: lorakit.save_adapter(c.m, c.tmp / "blocked", name="a"), ValueError,
                                 rf"blocked/{WEIGHTS} is a directory; cannot write the adapter there"),
    # mixed batches
    "rows-unknown": (None, lambda c: c.rows(["a", "zz"]), KeyError, r"no adapter 'zz'"),
    "rows-str": (None, lambda c: c.rows("ab"), TypeError, r"list of adapter names .*got 'ab'"),
    "rows-count": (None, lambda c: c.run_rows(["a", None]), ValueError, r"4 rows but 2 adapters"),
    "rows-merged": (_merged, lambda c: c.rows(["a"]), ValueError, r"needs unmerged adapters"),
    # combine
    "combine-unknown": (None, lambda c: lorakit.combine(c.m, ["a", "zz"]), KeyError, r"no adapter 'zz'"),
    "combine-str": (None, lambda c: lorakit.combine(c.m, "ab"), ValueError, r"adapters must be a list.*'ab'"),
    "combine-empty": (None, lambda c: lorakit.combine(c.m, []), ValueError, r"at least one adapter"),
    "combine-twice": (None, lambda c: lorakit.combine(c.m, ["a", "a"]), ValueError, r"name an adapter twice"),
    "combine-weights-count": (None, lambda c: lorakit.combine(c.m, ["a", "b"], [1.0]), ValueError, r"1 weights for 2"),
    "combine-weight-nan": (None, lambda c: lorakit.combine(c.m, ["a", "b"], [1.0, float("nan")]), ValueError,
                           r"weights must be finite numbers, got nan"),
    "combine-weight-str": (None, lambda c: lorakit.combine(c.m, ["a", "b"], [1.0, "x"]), ValueError,
                           r"weights must be finite numbers, got 'x'"),
    "combine-method": (None, lambda c: lorakit.combine(c.m, ["a", "b"], method="avg"), ValueError,
                       r"unknown combine method 'avg'"),
    "combine-name-taken": (None, lambda c: lorakit.combine(c.m, ["a", "b"], name="a"), ValueError, r"adapter name 'a'"),
    "combine-name-bad": (None, lambda c: lorakit.combine(c.m, ["a", "b"], name="x y"), ValueError, r"adapter name 'x y'"),
    "combine-density": (None, lambda c: lorakit.combine(c.m, ["a", "b"], method="ties", density=1.5), ValueError,
                        r"density in \(0, 1\], got 1.5"),
    "combine-density-missing": (None, lambda c: lorakit.combine(c.m, ["a", "b"], method="dare_linear"), ValueError,
                                r"method 'dare_linear' needs density"),
    "combine-rank": (None, lambda c: lorakit.combine(c.m, ["a", "b"], method="svd", rank=0), ValueError, r"rank=0"),
    "combine-rank-float": (None, lambda c: lorakit.combine(c.m, ["a", "b"], method="svd", rank=2.5), ValueError,
                           r"rank=2.5"),
    "combine-sign-method": (None, lambda c: lorakit.combine(c.m, ["a", "b"], method="ties", density=0.5,
                                                            majority_sign_method="most"), ValueError,
                            r"majority_sign_method must be 'total' or 'frequency', got 'most'"),
    "combine-merged": (_merged, lambda c: lorakit.combine(c.m, ["a", "b"]), ValueError, r"unmerge adapters \['a'\]"),
    # hotswap by name
    "hotswap-unknown": (None, lambda c: lorakit.hotswap(c.m, c.good, name="zz"), KeyError, r"no adapter 'zz'"),
    "hotswap-merged": (_merged, lambda c: lorakit.hotswap(c.m, c.good, name="a"), ValueError,
                       r"adapter 'a' is merged; unmerge it before hot-swapping"),
    "hotswap-other-targets": (None, lambda c: lorakit.hotswap(c.m, c.good, name="b"), ValueError,
                              r"same target modules as adapter 'b'"),
    "load-name-taken": (None, lambda c: lorakit.load_adapter(c.m, c.good, name="a"), ValueError,
                        r"adapter 'a' already exists"),
    "load-name-bad": (None, lambda c: lorakit.load_adapter(c.m, c.good, name="a b"), ValueError,
                      r"adapter name 'a b'"),
    "load-dir-missing": (None, lambda c: lorakit.load_adapter(c.m, c.tmp / "nothing", name="n"), FileNotFoundError,
                         r"no adapter_config.json in .*nothing"),
    "load-dir-is-file": (None, lambda c: lorakit.load_adapter(c.m, c.tmp / "afile", name="n"), ValueError,
                         r"afile is a file; an adapter is a directory"),
}


@dataclass
class Ctx:
    """What a table entry's call sees: the model, the case's directory, the good adapter."""

    m: torch.nn.Module
    tmp: Path
    good: Path

    def rows(self, names):
        return lorakit.adapter_per_row(self.m, names).__enter__()

    def run_rows(self, names):
        with lorakit.adapter_per_row(self.m, names):
            self.m(tiny.batch("llama"))


@pytest.mark.parametrize("case", CALLS)
def test_bad_call_refused(case, model, good, tmp_path):
    prepare, call, exc, match = CALLS[case]
    (tmp_path / "afile").write_text("a regular file")
    (tmp_path / "blocked" / WEIGHTS).mkdir(parents=True)  # a directory where the weights file goes
    if prepare:
        prepare(model)
    _refused(model, tmp_path, lambda: call(Ctx(model, tmp_path, good)), exc, match)


def _refused(model, root, call, exc, match):
    """``call`` raises ``exc`` matching ``match`` and changes neither ``model`` nor ``root``."""
    before, files = badinput.snapshot(model), badinput.tree(root)
    with pytest.raises(exc, match=match):
        call()
    badinput.assert_unchanged(model, before)
    assert badinput.tree(root) == files, "files on disk changed"
    assert not any(isinstance(m, LoraLayer) for m in _nested_layers(model))


def _nested_layers(model):
    for _, m in model.named_modules():
        if isinstance(m, LoraLayer):
            yield from (c for c in m.base_layer.modules() if isinstance(c, LoraLayer))
