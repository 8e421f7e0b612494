"""Batched greedy generation: the continuation each prompt gets, as text.

Prompts are token ids (rendered by the caller with the training template, so the model sees at
evaluation exactly what it saw in training). Batches are formed from prompts of similar length
(sorted, then restored to the input order) and left-padded, which is what a decoder-only model
needs for batched generation; greedy decoding makes the result independent of the batch size
up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn


def stop_token_ids(tokenizer, model: nn.Module | None = None) -> list[int]:
    """Token ids that end a reply: the tokenizer's EOS plus the model's generation-config EOS
    (chat models often end a turn with a token other than the tokenizer's EOS)."""
    ids = []
    for source in (getattr(tokenizer, "eos_token_id", None),
                   getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        for value in source if isinstance(source, (list, tuple)) else [source]:
            if value is not None and value not in ids:
                ids.append(int(value))
    return ids


def _left_padded(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def greedy_generate(model: nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int = 64,
                    batch_size: int = 16, stop_ids: list[int] | None = None) -> list[str]:
    """Greedy continuation of each prompt (``prompts[k]``: token ids), decoded with special
    tokens skipped and surrounding whitespace stripped; ``result[k]`` belongs to ``prompts[k]``.

    Generation of a row stops at any of ``stop_ids`` (default ``stop_token_ids``) or after
    ``max_new_tokens``.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_generate: a prompt is empty (no tokens)")
    stop_ids = stop_token_ids(tokenizer, model) if stop_ids is None else stop_ids
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))
    results: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            ids, mask = _left_padded([prompts[k] for k in chunk], pad_id, device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, pad_token_id=pad_id,
                                 eos_token_id=stop_ids, temperature=None, top_p=None, top_k=None)
            for k, row in zip(chunk, out[:, ids.shape[1]:]):
                results[k] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return results
