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
from lorakit.io import PREFIX, WEIGHTS_NAME, read_tensors

# stored suffix of (A, B) per layer kind
_SUFFIXES = {"linear": (".lora_A.weight", ".lora_B.weight"),
             "embedding": (".lora_embedding_A", ".lora_embedding_B")}
_MAGNITUDE = ".lora_magnitude_vector"


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


def _split(key: str) -> tuple[str, str] | None:
    """``(module, kind)`` for a LoRA A/B key, else None."""
    for kind, suffixes in _SUFFIXES.items():
        for suffix in suffixes:
            if key.endswith(suffix):
                return key[len(PREFIX):-len(suffix)], kind
    return None


def read_adapter(directory: str | Path) -> tuple[LoraConfig, list[AdapterLayer]]:
    """The config and every low-rank layer of the adapter in ``directory``, in file order."""
    directory = Path(directory)
    config = LoraConfig.load(directory)
    tensors = read_tensors(directory / WEIGHTS_NAME)
    modules: dict[str, str] = {}
    for key in tensors:
        found = _split(key)
        if found:
            modules.setdefault(*found)
    layers = []
    for module, kind in modules.items():
        a_suffix, b_suffix = _SUFFIXES[kind]
        a_key, b_key = PREFIX + module + a_suffix, PREFIX + module + b_suffix
        if a_key not in tensors or b_key not in tensors:
            missing = a_key if a_key not in tensors else b_key
            raise ValueError(f"{directory / WEIGHTS_NAME}: missing tensor {missing}")
        a, b = tensors[a_key], tensors[b_key]
        if kind == "linear" and a.dim() > 2:
            kind = "conv"
        layers.append(AdapterLayer(
            module=module, kind=kind, lora_a=a, lora_b=b, r=a.shape[0],
            alpha=config.alpha_for(module), scaling=config.scaling_for(module),
            dora=PREFIX + module + _MAGNITUDE in tensors))
    if not layers:
        raise ValueError(f"{directory / WEIGHTS_NAME}: no LoRA A/B tensors found")
    return config, layers
