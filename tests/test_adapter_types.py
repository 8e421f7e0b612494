"""The adapter-type registry: which type each config gets, errors that name the known types,
the table read at build time only (not per forward), and the worked example of
docs/architecture.md ("How to add an adapter type") loaded by PEFT."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import lorakit
from lorakit import adapter_types
from lorakit.adapter_types import adapter_type_for, config_class_for, registered_types
from lorakit.builtin_types import BUILTINS
from lorakit.variants import PLAIN
from lorakit.variants.adalora import ADALORA
from lorakit.variants.dora import DORA
from lorakit.variants.vera import VERA
from tests import tiny
from tests.test_docs import doc_blocks

ROOT = Path(__file__).resolve().parent.parent


def test_each_config_gets_its_one_type():
    # compared by class: a test may re-register an equivalent instance (DoraType(save_output=False))
    assert type(adapter_type_for(lorakit.LoraConfig())) is type(PLAIN)
    assert type(adapter_type_for(lorakit.LoraConfig(use_dora=True))) is type(DORA)
    assert type(adapter_type_for(lorakit.VeraConfig())) is type(VERA)
    assert type(adapter_type_for(lorakit.AdaLoraConfig(total_step=10))) is type(ADALORA)
    assert [k.name for k in BUILTINS] == ["lora", "dora", "vera", "adalora"]
    assert {k.name for k in BUILTINS} <= {k.name for k in registered_types()}
    assert config_class_for("LORA") is lorakit.LoraConfig
    assert config_class_for("VERA") is lorakit.VeraConfig
    assert config_class_for("ADALORA") is lorakit.AdaLoraConfig
    assert [k.plain_lora for k in BUILTINS] == [True, False, False, False]


def test_unknown_types_are_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"x.json: peft_type 'LOHA' is not supported; known: .*'ADALORA', 'LORA', 'VERA'"):
        config_class_for("LOHA", source="x.json")
    with pytest.raises(TypeError, match=r"registered adapter config: .*'LoraConfig'.*got dict"):
        adapter_type_for({"r": 8})
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="got dict"):
        lorakit.add_adapter(model, {"r": 8})
    assert isinstance(model[0], nn.Linear)  # nothing changed


def test_use_dora_without_a_dora_type_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(adapter_types, "_TYPES", {k: v for k, v in adapter_types._table().items() if k != "dora"})
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"no registered adapter type takes this LoraConfig with use_dora=True; "
                                         r"registered for it: \['lora'\]"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["0"], use_dora=True))
    assert isinstance(model[0], nn.Linear)


def _tiny_with(config, *names):
    model = tiny.make("llama")
    for name in names:
        lorakit.add_adapter(model, copy.deepcopy(config), name=name)
    with torch.no_grad():
        for name in names:
            for p in lorakit.adapter_state_dict(model, name).values():
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


@pytest.mark.parametrize("config", [lorakit.LoraConfig(r=4, target_modules="all-linear"),
                                    lorakit.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True),
                                    lorakit.VeraConfig(r=4, target_modules=["q_proj", "v_proj"])],
                         ids=["lora", "dora", "vera"])
def test_the_table_is_read_at_build_time_only(config, monkeypatch):
    """With the registry emptied after the adapters are built, forward, merge, unmerge and
    (plain LoRA) mixed batches still run, with the same numbers: the forward never looks a
    type up. Adding an adapter then fails, which shows the table really is empty."""
    model = _tiny_with(config, "a", "b")
    ids = torch.randint(0, tiny.VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    lorakit.set_adapter(model, "a")
    with torch.no_grad():
        expected = model(ids).logits
    monkeypatch.setattr(adapter_types, "_TYPES", {})
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)
        lorakit.merge(model, safe=True)
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)
        lorakit.unmerge(model)
        if isinstance(config, lorakit.LoraConfig) and not config.use_dora:
            with lorakit.adapter_per_row(model, ["b", "a"]):
                mixed = model(ids).logits
            torch.testing.assert_close(mixed[1], expected[1], rtol=1e-5, atol=1e-5)
            lorakit.set_adapter(model, "b")
            torch.testing.assert_close(mixed[0], model(ids).logits[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="registered adapter config"):
        lorakit.add_adapter(model, copy.deepcopy(config), name="c")


def test_inject_does_not_import_adapters():
    """inject.py (module surgery) sits below adapters.py (which adapters run): no cycle."""
    tree = ast.parse((ROOT / "lorakit" / "inject.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert "lorakit.adapters" not in imported and "lorakit.io" not in imported


def _worked_example(tmp_path, monkeypatch) -> dict:
    """Run the "How to add an adapter type" block of docs/architecture.md; its namespace."""
    (code,) = [c for where, c in doc_blocks() if where.startswith("docs/architecture.md") and "class Ia3Type" in c]
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    exec(compile(code, "docs/architecture.md", "exec"), namespace)
    return namespace


def test_worked_example_is_an_ia3_that_peft_loads(tmp_path, monkeypatch):
    peft = pytest.importorskip("peft", reason="PEFT is the consumer of this check: pip install 'peft==0.21.2'")
    example = _worked_example(tmp_path, monkeypatch)
    try:
        model = tiny.make("llama")
        base = copy.deepcopy(model)
        lorakit.add_adapter(model, example["Ia3Config"](target_modules=["k_proj", "v_proj", "o_proj"]))
        with torch.no_grad():
            for p in lorakit.adapter_state_dict(model).values():
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(0))
        ids = torch.randint(0, tiny.VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
        lorakit.save_adapter(model, tmp_path / "ia3-llama")
        with torch.no_grad():
            ours, plain = model(ids).logits, base(ids).logits
            theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "ia3-llama"))(ids).logits
        assert (ours - plain).abs().max() > 1e-3  # the adapter changes the output
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    finally:
        adapter_types._table().pop("ia3", None)
