"""The order examples are trained in, and how micro-batches become tensors.

An epoch's plan is a list of micro-batches; a micro-batch is a list of rows; a row is a list of
example indices (one index unless packing). The plan is a pure function of
``(lengths, seed, epoch, settings)``, so a resumed run rebuilds it and continues at the saved
position, and every process of a distributed run derives the same plan (process ``r`` of ``W``
takes micro-batches ``r, r + W, ...`` of each optimizer step).

- packing: examples (shuffled) are placed first-fit into rows of at most ``max_seq_len``
  tokens. Rows carry ``position_ids`` that restart at 0 for each example and no attention
  mask; Hugging Face models then build a block-diagonal causal mask from the position ids,
  so no token attends across examples (tests/test_train_packing.py checks packed == unpacked).
- length bucketing (no packing): shuffled examples are cut into chunks of
  ``BUCKET_BATCHES`` micro-batches, sorted by length inside a chunk, batched, and the batches
  shuffled; padding drops while the order stays random at the chunk scale.
"""

from __future__ import annotations

import torch

from lorakit.train.formats import IGNORE, Example

BUCKET_BATCHES = 32


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def pack_rows(order: list[int], lengths: list[int], max_len: int) -> list[list[int]]:
    """First-fit packing of ``order`` into rows of total length <= ``max_len``."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([])
            room.append(max_len)
            slot = len(rows) - 1
        rows[slot].append(i)
        room[slot] -= lengths[i]
    return rows


def epoch_plan(lengths: list[int], batch_size: int, seed: int, epoch: int,
               packing: bool = False, max_len: int = 0, shuffle: bool = True) -> list[list[list[int]]]:
    """Micro-batches of rows of example indices for one epoch (see the module docstring)."""
    order = _permutation(len(lengths), seed, epoch) if shuffle else list(range(len(lengths)))
    if packing:
        rows = pack_rows(order, lengths, max_len)
    else:
        rows = []
        chunk = batch_size * BUCKET_BATCHES
        for start in range(0, len(order), chunk):
            rows += [[i] for i in sorted(order[start:start + chunk], key=lambda i: lengths[i])]
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    if shuffle and not packing:
        batches = [batches[j] for j in _permutation(len(batches), seed + 1, epoch)]
    return batches


def step_micro_batches(plan: list, step_in_epoch: int, grad_accum: int, rank: int,
                       world_size: int) -> tuple[list, list]:
    """(this process's micro-batches, all processes' micro-batches) of one optimizer step."""
    per_step = grad_accum * world_size
    everyone = plan[step_in_epoch * per_step:(step_in_epoch + 1) * per_step]
    return everyone[rank::world_size], everyone


def steps_in_epoch(plan: list, grad_accum: int, world_size: int) -> int:
    """Full optimizer steps in a plan; a tail smaller than one step is dropped."""
    return len(plan) // (grad_accum * world_size)


def collate(examples: list[Example], micro_batch: list[list[int]], pad_id: int) -> dict:
    """Tensors for one micro-batch (rows padded on the right to the longest row).

    causal_lm: ``input_ids``, ``labels`` ``[B, T]`` and either ``attention_mask`` (one example
    per row) or ``position_ids`` (packed rows). seq_cls: ``input_ids``, ``attention_mask`` and
    ``labels`` ``[B]``.
    """
    rows = [[examples[i] for i in row] for row in micro_batch]
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for e in row:
            n = len(e.input_ids)
            ids[b, t:t + n] = torch.tensor(e.input_ids)
            if isinstance(e.labels, list):
                labels[b, t:t + n] = torch.tensor(e.labels)
            positions[b, t:t + n] = torch.arange(n)
            t += n
        mask[b, :t] = 1
        positions[b, t:] = torch.arange(width - t)  # padding reads as one more (ignored) example
    if isinstance(rows[0][0].labels, int):
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([row[0].labels for row in rows])}
    if any(len(row) > 1 for row in rows):
        return {"input_ids": ids, "position_ids": positions, "labels": labels}
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
