"""The MFU numerator: analytic step FLOPs == what PyTorch's FLOP counter sees autograd run."""

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

import lorakit
from lorakit.fast.flops import lora_step_flops


def test_formula_matches_flop_counter_on_core_layers():
    torch.manual_seed(0)
    # eager attention: its matmuls are counted as matmuls, with gradients for q, k and v
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100, attn_implementation="eager")
    model = LlamaForCausalLM(cfg)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.randint(0, 100, (2, 10))
    with FlopCounterMode(display=False) as counter:
        logits = model(input_ids=ids).logits  # the head runs on all 20 positions here
        forward = counter.get_total_flops()
        logits.float().sum().backward()
    want = lora_step_flops(cfg, batch=2, seq=10, targets=20, r=4)
    assert want["forward"] == forward
    assert want["backward"] == counter.get_total_flops() - forward
    assert want["total"] == counter.get_total_flops()
