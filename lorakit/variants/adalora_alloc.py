"""AdaLoRA's rank allocation: the training loop calls the controller once per step.

    ctrl = AdaLoraController(model)                # after add_adapter(model, AdaLoraConfig(...))
    for step in range(total_step):
        loss = model(**batch).loss + ctrl.regularization()
        loss.backward(); optimizer.step()
        ctrl.update_and_allocate(step)             # before zero_grad: it reads the gradients
        optimizer.zero_grad()

PEFT's RankAllocator, step for step: the sensitivity of each entry is ``|p * grad|``, smoothed
``S = b1*S + (1-b1)*|p*g|``, with uncertainty ``U = b2*U + (1-b2)*|(|p*g|) - S|``; the score of
triplet i of a layer is ``score(E_i) + mean_j score(A_ij) + mean_j score(B_ji)`` (score = S*U).
The budget (kept triplets over all layers) falls from ``init_r * layers`` to
``target_r * layers`` on a cubic schedule between ``tinit`` and ``total_step - tfinal``; every
``deltaT`` steps the lowest-scoring triplets get E = 0. At ``total_step - tfinal`` the mask is
final and recorded in ``config.rank_pattern``; after that it is re-applied every step.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.inject import adapted_modules, adapter_configs
from lorakit.variants.adalora import AdaLoraConfig, SVDLinear


class AdaLoraController:
    def __init__(self, model: nn.Module, adapter: str = "default"):
        config = adapter_configs(model).get(adapter)
        if not isinstance(config, AdaLoraConfig):
            raise ValueError(f"adapter {adapter!r} is not an AdaLoRA adapter")
        self.config, self.adapter = config, adapter
        self.layers = [(n, m) for n, m in adapted_modules(model) if isinstance(m, SVDLinear) and adapter in m.r]
        self.init_budget = sum(m.lora_A[adapter].shape[0] for _, m in self.layers)
        self.target_budget = config.target_r * len(self.layers)
        self._reset_scores()

    def _reset_scores(self) -> None:
        self.sensitivity: dict[int, torch.Tensor] = {}
        self.uncertainty: dict[int, torch.Tensor] = {}

    def _triplet(self, layer: SVDLinear):
        return layer.lora_A[self.adapter], layer.lora_E[self.adapter], layer.lora_B[self.adapter]

    # ---- the loss term ----------------------------------------------------------------------
    def regularization(self) -> torch.Tensor:
        """``orth_reg_weight * mean over A and B of ||P P^T - I||_F`` (A rows and B columns
        pushed towards orthonormal), the term PEFT's AdaLoraModel adds to the loss."""
        terms = []
        for _, layer in self.layers:
            a, _, b = self._triplet(layer)
            for gram in (a @ a.T, b.T @ b):
                terms.append(torch.linalg.norm(gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)))
        return self.config.orth_reg_weight * torch.stack(terms).mean()

    # ---- schedule ---------------------------------------------------------------------------
    def budget(self, step: int) -> tuple[int, bool]:
        """``(budget, reallocate now)`` at ``step`` (PEFT's cubic schedule)."""
        c = self.config
        if step <= c.tinit:
            return self.init_budget, False
        if step > c.total_step - c.tfinal:
            return self.target_budget, True
        progress = 1 - (step - c.tinit) / (c.total_step - c.tfinal - c.tinit)
        budget = int((self.init_budget - self.target_budget) * progress ** 3 + self.target_budget)
        return budget, step % c.deltaT == 0

    @torch.no_grad()
    def update_scores(self) -> None:
        b1, b2 = self.config.beta1, self.config.beta2
        for _, layer in self.layers:
            for p in self._triplet(layer):
                if p.grad is None:
                    raise RuntimeError(f"{layer.module_name}: no gradient; call update_and_allocate after "
                                       "backward and before zero_grad")
                ipt = (p * p.grad).abs()
                s = self.sensitivity.get(id(p), torch.zeros_like(p))
                u = self.uncertainty.get(id(p), torch.zeros_like(p))
                s = b1 * s + (1 - b1) * ipt
                self.sensitivity[id(p)] = s
                self.uncertainty[id(p)] = b2 * u + (1 - b2) * (ipt - s).abs()

    def _score(self, p: torch.Tensor) -> torch.Tensor:
        return self.sensitivity[id(p)] * self.uncertainty[id(p)]

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, list[bool]]:
        """Zero the E entries of the lowest-scoring triplets so ``budget`` remain; the mask."""
        scores = {}
        for name, layer in self.layers:
            a, e, b = self._triplet(layer)
            scores[name] = self._score(e).view(-1) + self._score(a).mean(1) + self._score(b).mean(0)
        k = self.init_budget - budget
        if k <= 0:
            return {f"{name}.lora_E": [True] * s.numel() for name, s in scores.items()}
        threshold = torch.kthvalue(torch.cat(list(scores.values())), k).values.item()
        pattern = {}
        for name, layer in self.layers:
            drop = scores[name] <= threshold
            layer.lora_E[self.adapter].masked_fill_(drop.view(-1, 1), 0.0)
            pattern[f"{name}.lora_E"] = (~drop).tolist()
        return pattern

    @torch.no_grad()
    def apply_pattern(self, pattern: dict[str, list[bool]]) -> None:
        for name, layer in self.layers:
            keep = torch.tensor(pattern[f"{name}.lora_E"], device=layer.lora_E[self.adapter].device)
            layer.lora_E[self.adapter].masked_fill_(~keep.view(-1, 1), 0.0)

    def update_and_allocate(self, step: int) -> int:
        """One step of the allocation (see the module docstring); returns the current budget."""
        final = self.config.total_step - self.config.tfinal
        if step < final:
            self.update_scores()
            budget, now = self.budget(step)
            if now:
                self.config.rank_pattern = self.mask_to_budget(budget)
            return budget
        if step == final:  # the scores from the steps before decide the final mask
            self.config.rank_pattern = self.mask_to_budget(self.target_budget)
            self._reset_scores()
        elif self.config.rank_pattern:
            self.apply_pattern(self.config.rank_pattern)
        return self.target_budget
