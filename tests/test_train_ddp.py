"""DDP (and FSDP) under torchrun, 2 CPU processes on gloo, gives the adapter of one process with
the same global batch: 2 processes x grad_accum 1 == 1 process x grad_accum 2 (the same
micro-batches per step); and a 2-process run resumed from a checkpoint ends bit-identical."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lorakit.train import train
from lorakit.train.config_io import to_dict
from tests.test_train_fixtures import (  # noqa: F401
    make_config, one_thread, tiny_model_dir, tokenizer, toy_data)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", "-m", "lorakit.cli", "train", *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_equal_one_process(make_config, tmp_path, fsdp):
    single = make_config(max_steps=4, grad_accum=2, batch_size=2, lora={"init_lora_weights": "gaussian"},
                         output_dir=str(tmp_path / "single"))
    reference = load_file(train(single) / "adapter_model.safetensors")

    values = to_dict(single) | {"grad_accum": 1, "fsdp": fsdp, "save_every": 2,
                                "output_dir": str(tmp_path / "ddp")}
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(values))
    result = _torchrun(str(config_path))
    assert "on 2 process(es)" in result.stdout and result.stdout.count("lorakit train: completed") == 1
    adapter = tmp_path / "ddp" / "adapter" / "adapter_model.safetensors"
    ddp = load_file(adapter)
    assert ddp.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ddp[key], reference[key], rtol=1e-4, atol=1e-5)

    if fsdp:
        return  # FSDP resume goes through the same checkpoint code with gathered tensors
    adapter.unlink()  # a crash after the step-2 checkpoint
    assert "resumed from" in _torchrun("--resume", str(tmp_path / "ddp")).stdout
    resumed = load_file(adapter)
    assert all(resumed[key].equal(ddp[key]) for key in ddp)
