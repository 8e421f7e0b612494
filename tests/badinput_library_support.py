"""Shared set-up of the library bad-input tables (tests/test_badinput_library.py: configs and
files; tests/test_badinput_calls.py: calls): a template model with two adapters, a saved
adapter, builders of broken copies of it, and ``refused``, the check every case runs: the call
fails with the expected error and changes neither the model nor the files on disk."""

from __future__ import annotations

import copy
import json
import shutil

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


def refused(model, root, call, exc, match):
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
