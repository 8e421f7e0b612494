"""Model names: a typo is answered at once with the closest embedded names (no Hub retries), a
Hub id is read from the local Hub cache, and eval / merge take Hub ids like train and serve."""

from __future__ import annotations

import shutil
import time

import pytest

from lorakit import hub
from lorakit.cli import main
from lorakit.models import resolve_model_path
from tests.test_train_fixtures import one_thread, tiny_model_dir, tokenizer, write_jsonl  # noqa: F401


@pytest.fixture
def no_hub(monkeypatch):
    """Any Hub lookup fails the test: answers must come from local checks."""
    def refuse(repo):
        raise AssertionError(f"looked {repo!r} up on the Hub")

    monkeypatch.setattr(hub, "_probe_hub", refuse)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_model_dir):
    """The tiny model as Hub id org/tiny in a Hub cache laid out as huggingface_hub writes it."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    repo = root / "models--org--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "c0ffee")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return repo / "snapshots" / "c0ffee"


def test_typo_of_an_embedded_name_is_answered_at_once(no_hub, capsys, tmp_path):
    started = time.perf_counter()
    with pytest.raises(hub.ModelNotFound, match="unknown model 'smollm2-135m-instrct'; did you mean "
                                                "'smollm2-135m-instruct'"):
        resolve_model_path("smollm2-135m-instrct")
    assert time.perf_counter() - started < 2
    data = write_jsonl(tmp_path / "x.jsonl", [{"text": "hi"}])
    assert main(["train", "--model", "SmolLM2-135M-instruct", "--data", str(data), "--dry-run"]) == 2
    assert "did you mean 'smollm2-135m-instruct'" in capsys.readouterr().err


def test_hub_id_not_cached_offline_fails_fast(no_hub, hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.ModelNotFound, match="'HuggingFaceTB/SmolLM2-135M': not an embedded model.*"
                                                "HF_HUB_OFFLINE is set; did you mean 'smollm2-135m-instruct'"):
        resolve_model_path("HuggingFaceTB/SmolLM2-135M")


def test_unreachable_hub_is_one_quick_lookup(hub_cache, monkeypatch):
    from huggingface_hub import HfApi

    calls = []

    def unreachable(self, repo, timeout=None):
        calls.append(timeout)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(hub.ModelNotFound, match="the Hub cannot be reached"):
        resolve_model_path("org/not-cached")
    assert calls == [hub.HUB_TIMEOUT_S]


def test_paths_and_empty_directories(tmp_path, no_hub):
    with pytest.raises(hub.ModelNotFound, match="model path not found: ./nope"):
        resolve_model_path("./nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(hub.ModelNotFound, match=r"has no model files \(no config.json; it is empty\)"):
        resolve_model_path(str(tmp_path / "empty"))


def test_eval_and_merge_take_hub_ids(hub_cache, no_hub, tmp_path, tiny_model_dir):
    import torch

    import lorakit
    from lorakit.models import load_model

    assert resolve_model_path("org/tiny") == str(hub_cache)
    model = load_model("org/tiny")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights="gaussian"))
    lorakit.save_adapter(model, tmp_path / "adapter")
    assert main(["merge", "--model", "org/tiny", "--adapter", str(tmp_path / "adapter"),
                 "--out", str(tmp_path / "merged")]) == 0
    merged = load_model(str(tmp_path / "merged"))
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(ids).logits, atol=1e-5)
    data = write_jsonl(tmp_path / "e.jsonl", [{"instruction": "hi", "output": "yo"}])
    assert main(["eval", "--model", "org/tiny", "--data", str(data), "--no-generate", "--dtype", "float32",
                 "--out", str(tmp_path / "eval.json")]) == 0
    assert (tmp_path / "eval.json").exists()
