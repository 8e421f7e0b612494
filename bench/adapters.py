"""Adapters that the benchmarks (and the export tests) measure: a LoRA of a named kind on a base
model, with a random ``B`` so that it changes the output, saved as a PEFT directory.

Imported as ``adapters`` by the programs in bench/ (``bench/`` is on their ``sys.path``) and as
``bench.adapters`` by tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

import lorakit

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER_KINDS = {
    "plain": dict(r=8, lora_alpha=16),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True),
    "rank_pattern": dict(r=8, lora_alpha=16, rank_pattern={"q_proj": 4, "down_proj": 12},
                         alpha_pattern={"v_proj": 40}),
}


def make_adapter(base: str, out: Path, kind: str = "plain", std: float = 0.05,
                 targets: list[str] | None = None, **extra) -> Path:
    """Save an adapter of ``kind`` (``ADAPTER_KINDS``, fields overridden by ``extra``) on
    ``base`` (a model name or directory ``lorakit.models.load_model`` reads) whose B is drawn
    from N(0, std) with seed 1; returns ``out``."""
    from lorakit.models import load_model

    torch.manual_seed(1)
    model = load_model(base)
    cfg = lorakit.LoraConfig(target_modules=targets or TARGETS, **{**ADAPTER_KINDS[kind], **extra})
    lorakit.add_adapter(model, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.normal_(0, std)
    lorakit.save_adapter(model, out)
    return out
