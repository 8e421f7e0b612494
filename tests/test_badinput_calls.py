"""Bad calls to the library, table-driven: every call below (bad names and arguments to
``add_adapter``, ``set_adapter``, ``delete_adapter``, ``merge``, ``save_adapter``, ``hotswap``,
``load_adapter``, ``combine``, mixed batches) must fail with an error that names the offending
thing and change nothing else: the model's tensors bit for bit, its module tree, adapter
configs and active set, and the files on disk (see tests/badinput_library_support.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import lorakit
from tests import tiny
from tests.badinput_library_support import (  # noqa: F401 (good, model, template: fixtures)
    WEIGHTS, good, model, refused as _refused, template)


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
