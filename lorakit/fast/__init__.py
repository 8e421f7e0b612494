"""Fast LoRA training on CPU: fused LoRA layers and a chunked loss, switched on per model.

    fast = enable_fast_training(model)          # after add_adapter, before the optimizer steps
    loss = fast.loss_sum(labels, input_ids=ids, attention_mask=mask)   # summed over targets
    loss.backward()
    ...
    fast.disable()                              # before merging or saving the full model

What it changes (each piece has a plain reference and a parity test, see docs/performance.md):

- every plain-LoRA linear layer over a frozen ``nn.Linear`` computes ``base + LoRA`` in one
  autograd function (``lora_fn``) that keeps no copy of the dropout input and regenerates the
  dropout mask from a seed in the backward pass;
- layers that read the same input (q/k/v, gate/up) are found by one probe forward and share one
  stacked matmul for the frozen weights and one for their ``A`` factors (``groups``); they then
  share one dropout mask per step, where PEFT draws one per layer (same distribution);
- ``loss_sum`` runs the output head only on labelled positions, in chunks, with the gradient
  computed chunk by chunk (``loss``), so no ``[tokens, vocab]`` fp32 logits are kept;
- Hugging Face SDPA attention over at most ``attention.MAX_LEN`` tokens runs as dense matmuls
  with a recomputed softmax (``attention``), twice as fast as the CPU flash kernel at 256 tokens;
- Llama-style RMSNorm modules run as one autograd function keeping the bf16 input (``norm``).

Adapter weights stay in their own dtype (fp32 master weights by default): the fused function
casts them to the activations' dtype for the matmuls and returns gradients in fp32.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.fast.groups import SharedInputGroup, install, uninstall
from lorakit.fast.swaps import use_fused_rmsnorm, use_short_attention
from lorakit.fast.loss import LOSS_CHUNK, causal_lm_loss_sum, linear_cross_entropy_sum, supports_chunked_loss
from lorakit.fast.lora_fn import fused_lora_linear


@dataclass
class FastConfig:
    """Switches of the fast path; each default is the measured best on a 2-core CPU."""

    group_shared_inputs: bool = True  # stack q/k/v and gate/up (one probe forward finds them)
    loss_chunk: int = LOSS_CHUNK  # rows of the output head per chunk in ``loss_sum``
    short_attention: bool = True  # dense attention for sequences up to attention.MAX_LEN tokens
    fused_rmsnorm: bool = True  # RMSNorm keeping its bf16 input, not an fp32 copy (norm.py)

    def __post_init__(self) -> None:
        if not (isinstance(self.loss_chunk, int) and self.loss_chunk > 0):
            raise ValueError(f"FastConfig.loss_chunk must be a positive integer, got {self.loss_chunk!r}")


@dataclass
class FastTraining:
    """Handle returned by ``enable_fast_training``."""

    model: nn.Module
    adapter: str
    config: FastConfig
    groups: list[SharedInputGroup] = field(default_factory=list)
    undo: list = field(default_factory=list)  # functions restoring swapped model parts

    @property
    def fused_layers(self) -> int:
        return sum(len(g.layers) for g in self.groups)

    @property
    def chunked_loss(self) -> bool:
        """Whether ``loss_sum`` can bypass the model's logits for this model."""
        return supports_chunked_loss(self.model)

    def loss_sum(self, labels: torch.Tensor, **inputs) -> torch.Tensor:
        """Summed next-token loss (``causal_lm_loss_sum``) of one causal-LM batch."""
        return causal_lm_loss_sum(self.model, labels, self.config.loss_chunk, **inputs)

    def disable(self) -> None:
        """Remove the fused hooks and give every frozen weight its own storage back."""
        uninstall(self.groups)
        self.groups = []
        for restore in reversed(self.undo):
            restore()
        self.undo = []


def enable_fast_training(model: nn.Module, config: FastConfig | None = None, adapter: str | None = None,
                         example: dict | None = None) -> FastTraining:
    """Switch ``model``'s adapter ``adapter`` (default: the single active one) to the fused path.

    ``example``: keyword arguments for one probe forward that finds layers sharing an input
    (default: 8 token ids). Layers outside the fused path's scope (other variants, quantized
    or trainable bases, LoRA biases, Conv1D) keep their ordinary forward.
    """
    config = config or FastConfig()
    if getattr(model, "_lorakit_fast", None) is not None:
        raise ValueError("enable_fast_training: already enabled on this model; call .disable() first")
    if adapter is None:
        from lorakit.inject import active_adapters

        active = active_adapters(model)
        if len(active) != 1:
            raise ValueError(f"enable_fast_training: needs one active adapter (or adapter=...), got {active}")
        adapter = active[0]
    probe = None
    if config.group_shared_inputs:
        probe = example if example is not None else {"input_ids": torch.zeros((1, 8), dtype=torch.long,
                                                                              device=_device(model))}
    try:
        groups = install(model, adapter, probe)
    except (TypeError, ValueError, RuntimeError) as err:
        warnings.warn(f"enable_fast_training: probe forward failed ({err}); layers are fused "
                      "one by one, without stacking shared inputs", stacklevel=2)
        groups = install(model, adapter, None)
    fast = FastTraining(model, adapter, config, groups)
    if config.short_attention:
        fast.undo.append(use_short_attention(model))
    if config.fused_rmsnorm:
        fast.undo.append(use_fused_rmsnorm(model))
    model._lorakit_fast = fast
    return fast


def disable_fast_training(model: nn.Module) -> None:
    """Undo ``enable_fast_training`` (no-op when it is not enabled)."""
    fast = getattr(model, "_lorakit_fast", None)
    if fast is not None:
        fast.disable()
        model._lorakit_fast = None


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


__all__ = [
    "FastConfig",
    "FastTraining",
    "causal_lm_loss_sum",
    "disable_fast_training",
    "enable_fast_training",
    "fused_lora_linear",
    "linear_cross_entropy_sum",
]
