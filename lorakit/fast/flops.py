"""Matmul FLOPs one LoRA training step needs, for model FLOPs utilisation (MFU).

Counted for a Llama-style decoder (q/k/v/o, gate/up/down per block, a linear head) with a
rank-``r`` adapter on every linear layer of every block and frozen base weights:

    forward   2 N sum(in*out)  +  2 N r sum(in+out)  +  4 B H S^2 hd per block  +  2 M d V
    backward  the frozen matmuls' input gradients (same FLOPs as forward), the adapters'
              input and weight gradients (twice their forward), attention's gradients (twice
              its forward), the head's input gradient (2 M d V)

with ``N = B * S`` tokens and ``M`` the positions that reach the head (the targets). Attention
is counted without the causal mask's saving (the usual convention). Gradients nobody needs are
not counted: block 0's q/k/v input gradient (its input, the frozen embedding, needs none).
Elementwise work (norms, softmax, rotary, dropout, the optimizer) is not counted; MFU is
``flops / seconds / measured bf16 matmul FLOP/s``.
"""

from __future__ import annotations


def _block_linears(cfg) -> list[tuple[int, int]]:
    """(in, out) of each linear layer of one decoder block."""
    d, inter = cfg.hidden_size, cfg.intermediate_size
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return [(d, q), (d, kv), (d, kv), (q, d), (d, inter), (d, inter), (inter, d)]


def lora_step_flops(cfg, batch: int, seq: int, targets: int, r: int) -> dict[str, float]:
    """FLOPs of one step (forward, backward, total) on a ``[batch, seq]`` micro-batch with
    ``targets`` labelled positions; ``cfg`` is a Hugging Face Llama-style config."""
    n, layers = batch * seq, cfg.num_hidden_layers
    linears = _block_linears(cfg)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    base = 2 * n * sum(i * o for i, o in linears)
    lora = 2 * n * r * sum(i + o for i, o in linears)
    attn = 4 * batch * cfg.num_attention_heads * seq * seq * hd
    head = 2 * targets * cfg.hidden_size * cfg.vocab_size
    forward = layers * (base + lora + attn) + head
    # block 0: the q/k/v input gradient (frozen and LoRA paths) is not needed
    qkv_input_grad = sum(2 * n * (i * o + r * i) for i, o in linears[:3])
    backward = layers * (base + 2 * lora + 2 * attn) + head - qkv_input_grad
    return {"forward": float(forward), "backward": float(backward), "total": float(forward + backward)}
