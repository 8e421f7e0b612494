"""Preference accuracy: how often a model ranks the chosen completion above the rejected one.

- causal LM: ``logp_accuracy`` = fraction of pairs with ``logp(chosen) > logp(rejected)``
  (summed completion log-probs, no reference needed); with an adapter also the DPO implicit
  reward accuracy ``reward_accuracy`` = fraction with ``(pc - rc) > (pr - rr)`` against the
  reference (the base, or the ``--ref-adapter``), and its mean ``reward_margin`` (unscaled by
  beta, so it does not depend on the training setting);
- reward model (``--task seq_cls``): ``accuracy`` = fraction with ``score(chosen) >
  score(rejected)`` and the mean score margin.

``lorakit eval --data prefs.jsonl [--adapter DIR] [--ref-adapter DIR]`` calls ``run_eval``
when the data file holds preference rows.
"""

from __future__ import annotations

import torch

from lorakit.preference.data import load_preferences
from lorakit.preference.logps import collate_pairs, completion_logps, sequence_scores
from lorakit.preference.reference import REFERENCE, reference_mode


@torch.no_grad()
def _scores(model, pairs, pad_id: int, batch_size: int, seq_cls: bool, reference: bool | None):
    """(chosen [N], rejected [N]) log-probs or scores; ``reference``: None = the model as it is,
    else the reference (True: the "reference" adapter, False: the base)."""
    chosen, rejected = [], []
    for start in range(0, len(pairs), batch_size):
        part = pairs[start:start + batch_size]
        batch = collate_pairs(part, pad_id)
        if seq_cls:
            s = sequence_scores(model, batch)
        elif reference is None:
            s, _ = completion_logps(model, batch)
        else:
            with reference_mode(model, reference):
                s, _ = completion_logps(model, batch)
        chosen.append(s[:len(part)].float())
        rejected.append(s[len(part):].float())
    return torch.cat(chosen), torch.cat(rejected)


def preference_metrics(model, pairs, pad_id: int, *, seq_cls: bool = False, with_reward: bool = False,
                       has_ref_adapter: bool = False, batch_size: int = 8) -> dict:
    """The metrics of the module docstring for ``pairs`` (a list of ``Pair``)."""
    model.eval()
    c, r = _scores(model, pairs, pad_id, batch_size, seq_cls, None)
    if seq_cls:
        return {"n": len(pairs), "accuracy": (c > r).float().mean().item(), "margin": (c - r).mean().item()}
    out = {"n": len(pairs), "logp_accuracy": (c > r).float().mean().item()}
    if with_reward:
        rc, rr = _scores(model, pairs, pad_id, batch_size, False, has_ref_adapter)
        margin = (c - rc) - (r - rr)
        out.update(reward_accuracy=(margin > 0).float().mean().item(), reward_margin=margin.mean().item())
    return out


def run_eval(args) -> int:
    """``lorakit eval`` on a preference file (see the module docstring)."""
    import lorakit
    from lorakit.eval.cli import write_report
    from lorakit.models import load_model, load_tokenizer

    seq_cls = args.task == "seq_cls"
    tokenizer = load_tokenizer(args.model)
    data = load_preferences(args.data, tokenizer, max_seq_len=args.max_seq_len)
    pairs = data.items[:args.limit] if args.limit else data.items
    model = load_model(args.model, dtype=getattr(torch, args.dtype), task=args.task,
                       num_labels=1 if seq_cls else None)
    if seq_cls and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    kw = dict(seq_cls=seq_cls, batch_size=args.batch_size)
    results = {}
    if args.base or not args.adapter:
        results["base"] = preference_metrics(model, pairs, tokenizer.pad_token_id, **kw)
    if args.adapter:
        if args.ref_adapter:
            lorakit.load_adapter(model, args.ref_adapter, name=REFERENCE)
        lorakit.load_adapter(model, args.adapter)
        lorakit.set_adapter(model, "default")
        results["adapter"] = preference_metrics(model, pairs, tokenizer.pad_token_id, with_reward=not seq_cls,
                                                has_ref_adapter=bool(args.ref_adapter), **kw)
    report = {"model": args.model, "adapter": args.adapter, "ref_adapter": args.ref_adapter,
              "data": args.data, "format": "preference", "task": args.task, "results": results}
    return write_report(args.out, report)


__all__ = ["preference_metrics", "run_eval"]
