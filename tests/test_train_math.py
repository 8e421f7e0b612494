"""The shared training math: loss normalisation under accumulation, packing, schedules, plans."""

from __future__ import annotations

import math

import pytest
import torch

import lorakit
from lorakit.train import batching, losses, optim
from lorakit.train.data import load_data
from tests.test_train_fixtures import (  # noqa: F401
    one_thread, tiny_model_dir, tokenizer, toy_instruction_rows, write_jsonl)


def _tiny_lora(model_dir, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights="gaussian"))
    return model


@pytest.fixture(scope="module")
def uneven_examples(tmp_path_factory, tokenizer):
    """Examples of clearly different lengths and completion sizes."""
    rows = [{"instruction": "Say " + "a " * (3 * i), "output": "b " * (1 + 5 * i)} for i in range(4)]
    path = write_jsonl(tmp_path_factory.mktemp("d") / "uneven.jsonl", rows)
    return load_data(path, tokenizer).examples


def _grads_after(model, examples, micro_batches, pad_id, naive: bool = False):
    """Gradients of one optimizer step over ``micro_batches``, normalised as the loop does
    (``naive``: the common mistake, a mean of per-micro-batch means)."""
    model.zero_grad()
    step_targets = sum(losses.count_targets(batching.collate(examples, mb, pad_id)["labels"])
                       for mb in micro_batches)
    for mb in micro_batches:
        batch = batching.collate(examples, mb, pad_id)
        labels = batch.pop("labels")
        loss = losses.loss_sum(model(**batch, use_cache=False).logits, labels)
        if naive:
            scale = 1 / (losses.count_targets(labels) * len(micro_batches))
        else:
            scale = losses.loss_scale(step_targets, 1)
        (loss * scale).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_grad_accumulation_4x1_equals_1x4(tiny_model_dir, tokenizer, uneven_examples):
    model = _tiny_lora(tiny_model_dir)
    pad = tokenizer.pad_token_id
    one_batch = _grads_after(model, uneven_examples, [[[0], [1], [2], [3]]], pad)
    four_micro = _grads_after(model, uneven_examples, [[[0]], [[1]], [[2]], [[3]]], pad)
    for name, grad in one_batch.items():
        torch.testing.assert_close(four_micro[name], grad, rtol=1e-4, atol=1e-6)
    # The test can tell: averaging per-micro-batch means weights short examples' tokens more.
    naive = _grads_after(model, uneven_examples, [[[0]], [[1]], [[2]], [[3]]], pad, naive=True)
    name = next(n for n in one_batch if "lora_B" in n)
    assert not torch.allclose(naive[name], one_batch[name], rtol=1e-2)


def test_packed_equals_unpacked_per_example_loss(tiny_model_dir, tokenizer, uneven_examples):
    model = _tiny_lora(tiny_model_dir).eval()
    pad = tokenizer.pad_token_id
    lengths = [len(e.input_ids) for e in uneven_examples]
    rows = batching.pack_rows([0, 1, 2, 3], lengths, max_len=sum(lengths[:3]))
    assert max(len(r) for r in rows) > 1  # at least one row really holds several examples
    packed = batching.collate(uneven_examples, rows, pad)
    assert "attention_mask" not in packed and "position_ids" in packed
    labels = packed.pop("labels")
    with torch.no_grad():
        token_loss = losses.token_losses(model(**packed, use_cache=False).logits, labels)
        plain = batching.collate(uneven_examples, [[i] for i in range(4)], pad)
        plain_labels = plain.pop("labels")
        per_example = losses.token_losses(model(**plain, use_cache=False).logits, plain_labels).sum(1)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            got = token_loss[r, start:start + lengths[i]].sum()
            torch.testing.assert_close(got, per_example[i], rtol=1e-5, atol=1e-5)
            start += lengths[i]


def test_loss_scale_is_global_token_mean():
    assert losses.loss_scale(10, 1) == 0.1
    assert losses.loss_scale(10, 2) == 0.2  # DDP divides the summed gradient by 2 again
    with pytest.raises(ValueError, match="no target tokens"):
        losses.loss_scale(0, 1)


def test_token_losses_shift_and_ignore():
    logits = torch.zeros(1, 3, 5)
    labels = torch.tensor([[7, -100, 2]])
    out = losses.token_losses(logits, labels)
    assert out.shape == (1, 3)
    assert out[0, 0] == 0 and out[0, 1] == 0 and math.isclose(out[0, 2].item(), math.log(5), rel_tol=1e-6)
    assert losses.count_targets(labels) == 1


def test_tokens_per_second():
    assert losses.tokens_per_second(1000, 2.0) == 500.0
    assert losses.tokens_per_second(10, 0.0) == 0.0


@pytest.mark.parametrize("kind, expected", [
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    # decay starts after the warmup's last step; the last step still trains (lr > 0)
    ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
    ("cosine", [0.5, 1.0, 1.0, 0.8535534, 0.5, 0.1464466]),
])
def test_lr_schedules_with_warmup(kind, expected):
    got = [optim.lr_factor(s, total=6, warmup=2, kind=kind) for s in range(6)]
    assert got == pytest.approx(expected, abs=1e-6)


def test_loraplus_groups_carry_their_peak_lr(tiny_model_dir):
    model = _tiny_lora(tiny_model_dir)
    groups = optim.param_groups(model, lr=1e-3, weight_decay=0.0, loraplus_ratio=16)
    names = {id(p): n for n, p in model.named_parameters()}
    b_groups = [g for g in groups if g["base_lr"] == 16e-3 and g["params"]]
    assert b_groups and all("lora_B" in names[id(p)] for g in b_groups for p in g["params"])
    assert optim.set_lr(torch.optim.AdamW(groups), 0.5) == 0.5e-3
    assert sorted(g["lr"] for g in groups if g["params"]) == [0.5e-3, 8e-3]
    assert len(optim.param_groups(model, 1e-3, 0.0)) == 1


def test_plan_is_deterministic_and_covers_every_example_once():
    lengths = [5, 9, 3, 7, 2, 8, 4, 6, 1, 10]
    plan = batching.epoch_plan(lengths, batch_size=3, seed=1, epoch=0)
    assert plan == batching.epoch_plan(lengths, batch_size=3, seed=1, epoch=0)
    assert plan != batching.epoch_plan(lengths, batch_size=3, seed=1, epoch=1)
    assert sorted(i for mb in plan for row in mb for i in row) == list(range(10))
    packed = batching.epoch_plan(lengths, batch_size=2, seed=1, epoch=0, packing=True, max_len=12)
    rows = [row for mb in packed for row in mb]
    assert sorted(i for row in rows for i in row) == list(range(10))
    assert all(sum(lengths[i] for i in row) <= 12 for row in rows)


def test_step_micro_batches_split_across_processes():
    plan = [[[i]] for i in range(8)]
    mine, everyone = batching.step_micro_batches(plan, 1, grad_accum=2, rank=1, world_size=2)
    assert everyone == [[[4]], [[5]], [[6]], [[7]]] and mine == [[[5]], [[7]]]
    assert batching.steps_in_epoch(plan, 3, 1) == 2
