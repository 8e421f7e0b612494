"""LoRA on an embedding table (PEFT's layout: ``lora_embedding_A [r, num_embeddings]``,
``lora_embedding_B [dim, r]``, A zero-initialised).

    y = base(ids) + s * (A.T[ids] @ B.T)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit import ops
from lorakit.layers.base import LoraLayer


class LoraEmbedding(LoraLayer):
    zero_init_A = True

    def __init__(self, base_layer: nn.Embedding, module_name: str = ""):
        super().__init__(base_layer, module_name)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def create_factors(self, name, r, config, device, dtype) -> None:
        num, dim = self.base_layer.weight.shape
        self.lora_embedding_A[name] = nn.Parameter(torch.zeros(r, num, device=device, dtype=dtype))
        self.lora_embedding_B[name] = nn.Parameter(torch.zeros(dim, r, device=device, dtype=dtype))

    def adapter_factors(self, name):
        if name is None:
            num, dim = self.base_layer.weight.shape
            return torch.empty(0, num), torch.empty(dim, 0)
        return self.lora_embedding_A[name], self.lora_embedding_B[name]

    def _embed(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        return F.embedding(ids, table, base.padding_idx, base.max_norm, base.norm_type,
                           base.scale_grad_by_freq, base.sparse)

    def lora_term(self, name: str, x: torch.Tensor) -> torch.Tensor:
        # No dropout on token ids (as PEFT).
        a, b = self.lora_embedding_A[name], self.lora_embedding_B[name]
        return (self._embed(x, a.T) @ b.T) * self.scaling[name]

    def plain_delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.lora_embedding_A[name], self.lora_embedding_B[name]
        return (b.float() @ a.float()).T * self.scaling[name]

    def row_delta(self, x, a_stack, b_stack, scale, slot) -> torch.Tensor:
        return ops.lora_embedding_rows(x, a_stack, b_stack, scale, slot)
