"""Sequence classification: predicted labels from a ``*ForSequenceClassification`` model."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def predict_labels(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 32,
                   max_length: int = 512) -> list[int]:
    """``argmax`` of the classifier's logits for each text, in order (batches padded as the
    tokenizer is configured; HF's decoder classifiers pool the last non-pad token)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds: list[int] = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
            preds += logits.argmax(-1).tolist()
    finally:
        model.train(was_training)
    return preds
