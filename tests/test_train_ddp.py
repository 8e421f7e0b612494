"""DDP (and FSDP) under torchrun, 2 CPU processes on gloo, gives the adapter of one process with
the same global batch: 2 processes x grad_accum 1 == 1 process x grad_accum 2 (the same
micro-batches per step)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lorakit.train import train
from lorakit.train.schema import to_dict
from tests.test_train_fixtures import (  # noqa: F401
    make_config, one_thread, tiny_model_dir, tokenizer, toy_data)


def _torchrun(config_path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "lorakit.cli", "train", str(config_path)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_equal_one_process(make_config, tmp_path, fsdp):
    single = make_config(max_steps=4, grad_accum=2, batch_size=2, lora={"init_lora_weights": "gaussian"},
                         output_dir=str(tmp_path / "single"))
    reference = load_file(train(single) / "adapter_model.safetensors")

    values = to_dict(single) | {"grad_accum": 1, "fsdp": fsdp,
                                "output_dir": str(tmp_path / "ddp")}
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(values))
    result = _torchrun(config_path, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout and result.stdout.count("lorakit train: completed") == 1
    ddp = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    assert ddp.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ddp[key], reference[key], rtol=1e-4, atol=1e-5)
