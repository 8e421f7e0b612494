"""The real embedded SmolLM2-135M-Instruct through `lorakit train` (slow): a few bf16 steps on
the demo data, and the adapter loads in lorakit and in PEFT with the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorakit.train import train
from lorakit.train.config_io import from_dict
from lorakit.train.tracking import read_metrics

DATA = Path(__file__).resolve().parent.parent / "data" / "sql_demo" / "train.jsonl"


@pytest.mark.slow
def test_smollm2_trains_and_the_adapter_loads_in_peft(tmp_path):
    cfg = from_dict({"data": str(DATA), "output_dir": str(tmp_path / "run"), "max_steps": 3,
                     "batch_size": 2, "lr": 1e-3, "progress": False, "save_every": 0,
                     "lora": {"r": 4, "lora_alpha": 8}})
    out = train(cfg)
    losses = [r["loss"] for r in read_metrics(out.parent / "metrics.jsonl")]
    assert len(losses) == 3 and all(0 < x < 10 for x in losses)

    import lorakit
    from lorakit.models import load_model
    from peft import PeftModel

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    ours = lorakit.load_adapter(load_model(dtype=torch.float32), out)
    theirs = PeftModel.from_pretrained(load_model(dtype=torch.float32), out)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-4, atol=1e-4)
