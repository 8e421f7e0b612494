"""Read a PEFT LoRA adapter directory into per-layer factors for analysis (no model needed).

Each adapted module becomes one ``AdapterLayer``: its stored ``lora_A``/``lora_B`` tensors,
rank, alpha and scaling (from ``adapter_config.json``), and ``update_factors()`` returning
``(L, R)`` with ``dW = s B A = L @ R`` as a map from inputs to outputs, ``[out, in]`` (conv
kernels flattened to ``[out, in * kernel]``; for an embedding ``[dim, num_embeddings]``). A
base weight stored the other way round (GPT-2 ``Conv1D``, ``nn.Embedding``) must be transposed
to this orientation before it is compared with ``dW`` (``lorakit.analysis.base.base_weights``). ``modules_to_save`` copies and biases are not low-rank updates and are
skipped. For DoRA adapters (``lora_magnitude_vector`` present) ``dW`` is the directional term
``s B A`` only: the magnitude rescaling needs the base weight and is not included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lorakit.config import LoraConfig
from lorakit.formats import peft


@dataclass
class AdapterLayer:
    module: str             # module path in the base model, e.g. model.layers.0.self_attn.q_proj
    kind: str               # "linear", "conv" or "embedding"
    lora_a: torch.Tensor    # as stored: [r, in] / [r, in, *kernel] / [r, num_embeddings]
    lora_b: torch.Tensor    # as stored: [out, r] / [out, r, 1, ...] / [dim, r]
    r: int
    alpha: float
    scaling: float
    dora: bool = False

    def a_matrix(self) -> torch.Tensor:
        """``A`` as a matrix ``[r, in]`` (conv kernels flattened): the paper's subject in 7.2."""
        return self.lora_a.reshape(self.lora_a.shape[0], -1)

    def update_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L [out, r], R [r, in])`` with ``L @ R == s B A == dW`` (float64)."""
        return self.lora_b.reshape(self.lora_b.shape[0], -1).double() * self.scaling, self.a_matrix().double()


def read_adapter(directory: str | Path) -> tuple[LoraConfig, list[AdapterLayer]]:
    """The config and every low-rank layer of the adapter in ``directory`` (read by
    ``formats.peft``), in file order."""
    directory = Path(directory)
    config = LoraConfig.load(directory)
    tensors, source = peft.read_weights(directory)
    layers = []
    for module, f in peft.group_factors(tensors, source).items():
        kind = "embedding" if f.embedding else "conv" if f.a.dim() > 2 else "linear"
        layers.append(AdapterLayer(
            module=module, kind=kind, lora_a=f.a, lora_b=f.b, r=f.a.shape[0],
            alpha=config.alpha_for(module), scaling=config.scaling_for(module),
            dora=f.magnitude is not None))
    if not layers:
        raise ValueError(f"{source}: no LoRA A/B tensors found")
    return config, layers
