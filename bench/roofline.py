"""This machine's bound for a decode step: measured bf16 GEMM rate and memory bandwidth, and the
FLOPs and bytes one batched decode step of a Llama-style model needs.

A decode step of batch ``B`` at context ``T`` (tokens already in the KV cache) does

    flops = 2 * B * (linear weights incl. the output head) + 4 * B * layers * heads * head_dim * T
    bytes = every weight once (dtype size) + K and V of the cache once (B * T * layers * 2 * kv_heads * head_dim)

and cannot beat ``max(flops / gemm_rate, bytes / bandwidth)``.
"""

from __future__ import annotations

import time

import torch

__all__ = ["gemm_tflops", "copy_bandwidth_gbs", "decode_step_cost", "bound_ms"]


def _best_seconds(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_tflops(m: int, k: int, n: int, dtype=torch.bfloat16, reps: int = 5) -> float:
    """Best-of-``reps`` rate of ``[m, k] @ [k, n]`` in TFLOP/s (2mkn flops)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return 2 * m * k * n / _best_seconds(lambda: a @ b, reps) / 1e12


def copy_bandwidth_gbs(mib: int = 256, reps: int = 5) -> float:
    """Best-of-``reps`` ``dst.copy_(src)`` of ``mib`` MiB, counting read + write bytes (STREAM
    copy's convention), in GB/s."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _best_seconds(lambda: dst.copy_(src), reps) / 1e9


def decode_step_cost(config, batch: int, context: int, dtype_bytes: int = 2) -> tuple[float, float]:
    """(flops, bytes) of one decode step, per the module docstring, from a transformers config."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    per_layer = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2 + 3 * h * inter  # q,o + k,v + mlp
    linear = layers * per_layer + h * config.vocab_size  # the output head (tied or not, it is read)
    flops = 2 * batch * linear + 4 * batch * layers * heads * head_dim * context
    embed = 0 if getattr(config, "tie_word_embeddings", False) else h * config.vocab_size
    kv = batch * context * layers * 2 * kv_heads * head_dim
    return float(flops), float((linear + embed + kv) * dtype_bytes)


def bound_ms(flops: float, nbytes: float, tflops: float, gbs: float) -> dict:
    """Compute-bound and bandwidth-bound milliseconds for one step, and the larger of the two."""
    compute, memory = flops / (tflops * 1e12) * 1e3, nbytes / (gbs * 1e9) * 1e3
    return {"compute_ms": compute, "bandwidth_ms": memory, "bound_ms": max(compute, memory)}
