"""Token-level loss of a model on a tokenized data set: the mean NLL and its perplexity.

The loss math is the training loop's own (``lorakit.train.losses``): a token counts when its
label is not ``IGNORE`` (prompt and padding are ignored, as in completion-only training). The
mean is over every counted token of the whole data set, not a mean of batch means, so the
result does not depend on the batch size.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.eval.metrics import perplexity
from lorakit.train.batching import collate, epoch_plan
from lorakit.train.data import TokenizedData
from lorakit.train.losses import count_targets, loss_sum


@torch.no_grad()
def dataset_loss(model: nn.Module, data: TokenizedData, pad_id: int, batch_size: int = 8) -> dict:
    """``{"loss", "perplexity", "tokens"}`` of ``model`` on every example of ``data`` (causal
    LM; ``tokens`` is the number of counted target tokens)."""
    device = next(model.parameters()).device
    lengths = [len(e.input_ids) for e in data.examples]
    plan = epoch_plan(lengths, batch_size, seed=0, epoch=0, shuffle=False)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for micro_batch in plan:
            batch = collate(data.examples, micro_batch, pad_id)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            labels = batch["labels"].to(device)
            total += float(loss_sum(logits, labels))
            count += count_targets(labels)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError(f"{data.source}: no target tokens to compute a loss on")
    return {"loss": total / count, "perplexity": perplexity(total / count), "tokens": count}
