"""Per-example completion log-probabilities, and the batches they are computed on.

Chosen and rejected go through the model as one concatenated batch: rows ``0..B-1`` are the
chosen completions, rows ``B..2B-1`` the rejected ones (TRL's layout), right-padded.

Reference (what ``completion_logps`` equals on either path):

    logits = model(input_ids, attention_mask).logits                    # [N, T, V]
    logp_t = log_softmax(logits[:, t - 1].float())[labels[:, t]]         # labels != -100
    logps  = sum_t logp_t            tokens = #{t : labels[:, t] != -100}

The chunked path (``chunked=True``, lorakit.fast) runs the decoder, then the output head only
on each row's completion positions, through ``linear_cross_entropy_sum`` once per row, so no
``[N, T, vocab]`` logits exist and each row's log-prob has its own gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.fast.loss import LOSS_CHUNK, linear_cross_entropy_sum
from lorakit.preference.data import Pair, Unpaired
from lorakit.train.batching import collate
from lorakit.train.formats import IGNORE, Example
from lorakit.train.losses import token_losses


def collate_pairs(pairs: list[Pair], pad_id: int) -> dict:
    """``input_ids``, ``attention_mask``, ``labels`` ``[2B, T]``: chosen rows, then rejected."""
    examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return collate(examples, [[i] for i in range(len(examples))], pad_id)


def kl_examples(items: list[Unpaired]) -> list[Example]:
    """KTO's mismatched pairs: row ``i``'s prompt with row ``i - 1``'s completion (cyclic, as
    TRL's KTO collator builds them)."""
    out = []
    for i, item in enumerate(items):
        other = items[i - 1]
        ids = item.example.input_ids[:item.prompt_len] + other.example.input_ids[other.prompt_len:]
        labels = [IGNORE] * item.prompt_len + other.example.labels[other.prompt_len:]
        labels[0] = IGNORE
        out.append(Example(ids, labels, item.where))
    return out


def collate_unpaired(items: list[Unpaired], pad_id: int) -> tuple[dict, dict, torch.Tensor]:
    """(completions batch, KL batch, desirable ``[B]`` bool) for KTO."""
    index = [[i] for i in range(len(items))]
    batch = collate([it.example for it in items], index, pad_id)
    kl = collate(kl_examples(items), index, pad_id)
    return batch, kl, torch.tensor([it.desirable for it in items])


def completion_logps(model: nn.Module, batch: dict, chunked: bool = False,
                     chunk: int = LOSS_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs ``[N]`` fp32, completion token counts ``[N]``) of a causal
    LM batch (``input_ids``, ``attention_mask``, ``labels``; see the module docstring)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    tokens = (labels[:, 1:] != IGNORE).sum(dim=1)
    if not chunked:
        logits = model(**inputs, use_cache=False).logits
        return -token_losses(logits, labels).sum(dim=1), tokens
    hidden = model.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1]
    weight = model.get_output_embeddings().weight
    target = labels[:, 1:]
    rows = []
    for b in range(labels.shape[0]):
        keep = target[b] != IGNORE
        rows.append(-linear_cross_entropy_sum(hidden[b][keep], weight, target[b][keep], chunk))
    return torch.stack(rows).float(), tokens


def sequence_scores(model: nn.Module, batch: dict) -> torch.Tensor:
    """Reward-model scores ``[N]``: the 1-logit sequence-classification head at each row's last
    token (the model finds it from ``pad_token_id``)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs, use_cache=False).logits[:, 0].float()


__all__ = ["collate_pairs", "collate_unpaired", "completion_logps", "kl_examples", "sequence_scores"]
