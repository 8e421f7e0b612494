"""Preference losses as pure tensor functions, with TRL 1.16's exact definitions.

Inputs are per-example completion log-probabilities: ``logps`` = sum over the completion's
tokens of ``log p(token | prefix)``, ``tokens`` = how many completion tokens that sum covers
(for the length-normalised methods). Every function takes ``[B]`` tensors (B pairs, or B
unpaired completions for KTO) and returns ``Terms``: a per-example loss ``[B]`` whose mean is
the loss, the implicit rewards that the metrics report, and (ORPO) a summed NLL over the
chosen tokens that the caller divides by the number of chosen tokens.

    method   loss per pair (d = chosen - rejected)                               TRL source
    dpo      -logsigmoid(beta * (d logratio))                                    DPOTrainer "sigmoid"
    ipo      (d (logratio / tokens) - 1 / (2 beta))^2                            DPOTrainer "ipo"
    simpo    -logsigmoid(beta * d (logps / tokens) - gamma)                      CPOTrainer "simpo", cpo_alpha=0
    orpo     nll(chosen) - beta * logsigmoid(log odds(avg logps))                ORPOTrainer
    kto      w_d (1 - sigmoid(beta (logratio - z))) | w_u (1 - sigmoid(beta (z - logratio)))   KTOTrainer "kto"
    reward   -logsigmoid(score_chosen - score_rejected - margin)                RewardTrainer

``logratio = policy logps - reference logps``. Rewards: ``beta * logratio`` (dpo, ipo, kto),
``beta * logps / tokens`` (simpo, orpo), the score itself (reward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Terms:
    """What one batch's loss is made of. ``loss = per_example.mean() + nll_sum / n_chosen_tokens``
    for one batch; ``step_loss`` normalises over a whole optimizer step."""

    per_example: torch.Tensor       # [B]
    chosen_rewards: torch.Tensor    # [B] (KTO: the desirable examples' rewards only)
    rejected_rewards: torch.Tensor  # [B] (KTO: the undesirable examples' rewards only)
    nll_sum: torch.Tensor | None = None  # ORPO: summed NLL of the chosen tokens


def dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta: float = 0.1) -> Terms:
    """DPO with the sigmoid loss (Rafailov et al. 2023, eq. 7)."""
    chosen_ratio, rejected_ratio = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    return Terms(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def ipo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
             chosen_tokens, rejected_tokens, beta: float = 0.1) -> Terms:
    """IPO (Azar et al. 2023, eq. 17) on log-ratios averaged per completion token, as TRL does
    (the IPO authors' normalised form)."""
    chosen_ratio, rejected_ratio = chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps
    delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
    losses = (delta - 1 / (2 * beta)) ** 2
    return Terms(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def simpo_loss(chosen_logps, rejected_logps, chosen_tokens, rejected_tokens,
               beta: float = 0.1, gamma: float = 0.5) -> Terms:
    """SimPO (Meng et al. 2024): reference-free, length-normalised log-probs, target margin
    ``gamma``. TRL: ``CPOTrainer(loss_type="simpo", cpo_alpha=0)``."""
    chosen_avg = chosen_logps / chosen_tokens.clamp(min=1)
    rejected_avg = rejected_logps / rejected_tokens.clamp(min=1)
    losses = -F.logsigmoid(beta * (chosen_avg - rejected_avg - gamma / beta))
    return Terms(losses, beta * chosen_avg.detach(), beta * rejected_avg.detach())


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable on both sides of ``-log 2``."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(chosen_logps, rejected_logps, chosen_tokens, rejected_tokens,
              chosen_nll_sum: torch.Tensor, beta: float = 0.1) -> Terms:
    """ORPO (Hong et al. 2024, eqs. 4-7): SFT loss on the chosen completion minus ``beta`` times
    the log-sigmoid of the log odds ratio of the per-token average log-probs. Reference-free.
    ``chosen_nll_sum`` = ``-chosen_logps.sum()`` (kept apart: it is normalised per token)."""
    acc = torch.promote_types(chosen_logps.dtype, torch.float32)  # at least fp32, as TRL
    chosen_avg = (chosen_logps / chosen_tokens.clamp(min=1)).to(acc)
    rejected_avg = (rejected_logps / rejected_tokens.clamp(min=1)).to(acc)
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
    losses = -beta * F.logsigmoid(log_odds)
    return Terms(losses, beta * chosen_avg.detach(), beta * rejected_avg.detach(), chosen_nll_sum)


def kto_kl(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point ``z``: the batch mean of policy - reference log-probs of mismatched
    (prompt, completion) pairs, detached and clamped at 0."""
    return (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(logps, ref_logps, desirable: torch.Tensor, kl: torch.Tensor, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Terms:
    """KTO (Ethayarajh et al. 2024) on unpaired completions; ``desirable`` ``[B]`` bool.

    TRL concatenates the desirable losses and then the undesirable ones; the mean is the same
    in any order, so ``per_example`` keeps the batch order."""
    ratio = logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    losses = torch.where(desirable, good, bad)
    rewards = beta * ratio.detach()
    return Terms(losses, rewards[desirable], rewards[~desirable])


def bradley_terry_loss(chosen_scores, rejected_scores, margin: torch.Tensor | None = None) -> Terms:
    """Pairwise reward-model loss (Bradley-Terry; InstructGPT eq. 1), optional per-pair margin."""
    delta = chosen_scores - rejected_scores
    losses = -F.logsigmoid(delta - margin if margin is not None else delta)
    return Terms(losses, chosen_scores.detach(), rejected_scores.detach())


def step_loss(terms: Terms, n_examples: int, n_chosen_tokens: int) -> torch.Tensor:
    """This micro-batch's share of the optimizer step's loss: per-example losses summed over
    ``n_examples`` (all examples of the step), plus the NLL sum over ``n_chosen_tokens`` (all
    chosen tokens of the step). One micro-batch that is the whole step gives the batch mean
    that TRL computes; 4 micro-batches x 1 equal 1 x 4."""
    loss = terms.per_example.sum() / n_examples
    if terms.nll_sum is not None:
        loss = loss + terms.nll_sum / max(1, n_chosen_tokens)
    return loss


def metrics(terms: Terms) -> dict[str, float]:
    """TRL's names: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies
    (paired methods; KTO reports the two means only)."""
    out = {}
    c, r = terms.chosen_rewards.float(), terms.rejected_rewards.float()
    if c.numel():
        out["rewards/chosen"] = c.mean().item()
    if r.numel():
        out["rewards/rejected"] = r.mean().item()
    if c.shape == r.shape and c.numel() and len(terms.per_example) == len(c):
        out["rewards/margins"] = (c - r).mean().item()
        out["rewards/accuracies"] = (c > r).float().mean().item()
    return out


__all__ = ["Terms", "bradley_terry_loss", "dpo_loss", "ipo_loss", "kto_kl", "kto_loss", "log1mexp",
           "metrics", "orpo_loss", "simpo_loss", "step_loss"]
