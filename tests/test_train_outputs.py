"""What a run leaves behind is read by other tools without help: PEFT's AutoPeftModel loads the
adapter from its adapter_config.json base id (resolved offline from a Hub cache), the tokenizer
and chat template sit beside it, and the model card carries the Hub's metadata."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from lorakit.train import train
from lorakit.train.build import base_model_id
from lorakit.train.card import RunSummary, model_card
from lorakit.train.config import TrainConfig
from tests.test_train_fixtures import (  # noqa: F401
    make_config, one_thread, tiny_model_dir, tokenizer, toy_data)

@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_model_dir):
    from huggingface_hub import constants

    root = tmp_path / "hub"
    snapshot = root / "models--org--tiny" / "snapshots" / "c0ffee"
    shutil.copytree(tiny_model_dir, snapshot)
    (root / "models--org--tiny" / "refs").mkdir()
    (root / "models--org--tiny" / "refs" / "main").write_text("c0ffee")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root, snapshot


def test_peft_autopeft_loads_the_adapter_from_its_base_id(make_config, hub_cache, tokenizer, monkeypatch):
    pytest.importorskip("peft", reason="PEFT not installed: pip install 'lorakit[dev]'")
    root, snapshot = hub_cache
    out = train(make_config(model="org/tiny", max_steps=3, lora={"init_lora_weights": "gaussian"}))
    config = yaml.safe_load((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny"
    from huggingface_hub import constants
    from peft import AutoPeftModelForCausalLM

    import lorakit
    from lorakit.models import load_model

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the base comes from the Hub cache
    peft_model = AutoPeftModelForCausalLM.from_pretrained(out).eval()
    assert peft_model.peft_config["default"].base_model_name_or_path == "org/tiny"
    ours = load_model(str(snapshot)).eval()
    lorakit.load_adapter(ours, out)
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, ours(ids).logits, rtol=1e-4, atol=1e-4)
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template == tokenizer.chat_template and saved("hi")["input_ids"] == tokenizer("hi")["input_ids"]
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "org/tiny" and meta["library_name"] == "peft"
    assert {"lora", "peft", "lorakit"} <= set(meta["tags"]) and meta["pipeline_tag"] == "text-generation"
    assert "AutoPeftModelForCausalLM.from_pretrained" in card


def test_embedded_model_is_named_by_its_hub_id():
    assert base_model_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    summary = RunSummary(["lorakit", "train"], "chat", 1, 0, 10, {}, 1, 1.0, 1.0, None, None, 1, 2, "completed")
    card = model_card(TrainConfig(data="x.jsonl"), summary)
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "dequantized from its Q4_1 GGUF file" in card
    local = model_card(TrainConfig(data="x.jsonl", model="/tmp"), summary)
    assert "base_model" not in yaml.safe_load(local.split("---\n")[1])  # a path is no Hub id
