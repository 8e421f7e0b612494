"""Preference tuning with LoRA: DPO, IPO, ORPO, SimPO, KTO and Bradley-Terry reward models.

    losses.py     the losses as pure tensor functions (TRL's definitions)
    data.py       preference rows (TRL's formats, UltraFeedback, Anthropic HH, KTO) -> tokens
    logps.py      concatenated chosen/rejected batches, per-example completion log-probs
    reference.py  the reference model without a copy (adapter disabled / reference adapter),
                  precomputed reference log-probs cached as safetensors
    step.py       one micro-batch: the forwards a method needs and its loss terms
    loop.py       ``lorakit train --method ...``
    evaluate.py   preference accuracy (``lorakit eval`` on a preference file)

See docs/preference.md.
"""

from lorakit.preference.losses import (Terms, bradley_terry_loss, dpo_loss, ipo_loss, kto_loss,
                                       orpo_loss, simpo_loss)

__all__ = ["Terms", "bradley_terry_loss", "dpo_loss", "ipo_loss", "kto_loss", "orpo_loss", "simpo_loss"]
