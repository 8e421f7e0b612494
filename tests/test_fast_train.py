"""`lorakit train` runs on the fast path by default and trains the same adapter as without it."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from lorakit.train import loop, train
from tests.test_train_fixtures import (  # noqa: F401
    make_config, one_thread, tiny_model_dir, tokenizer, toy_data)


def test_fast_path_is_the_default_and_trains_the_same_adapter(make_config, tmp_path, monkeypatch):
    used = []
    real = loop.enable_fast_training
    monkeypatch.setattr(loop, "enable_fast_training", lambda model: used.append(real(model)) or used[-1])
    fast_out = train(make_config(max_steps=4, output_dir=str(tmp_path / "fast")))
    assert len(used) == 1 and used[0].fused_layers > 0 and used[0].chunked_loss
    plain_out = train(make_config(max_steps=4, output_dir=str(tmp_path / "plain"), fast=False))
    assert len(used) == 1
    fast, plain = load_file(fast_out / "adapter_model.safetensors"), load_file(plain_out / "adapter_model.safetensors")
    assert fast.keys() == plain.keys()
    # fp32, no dropout: the same math up to summation order; Adam (lr 1e-2) turns rounding in
    # near-zero gradients into differences of up to ~1e-4 after 4 steps (a wrong gradient: ~1e-2)
    for key in fast:
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-3, atol=2e-4, msg=key)
