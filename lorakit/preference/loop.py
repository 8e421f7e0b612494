"""``lorakit train --method dpo|ipo|orpo|simpo|kto|reward``: the preference loop, top to bottom.

    setup      run directory, tokenizer, preference data (every row checked before the model
               loads), model + adapter (or the reference adapter loaded twice), fast path
    reference  precomputed reference log-probs (``precompute_ref``), from the cache if it fits
    loop       per step: micro-batches -> ``Terms`` (step.py), loss normalised over the step's
               pairs (``losses.step_loss``), backward, NaN/inf check, clipping, AdamW step;
               metrics (loss, rewards/chosen|rejected|margins|accuracies) to the bar,
               metrics.jsonl and TensorBoard; eval every ``eval_every`` steps and at the end
    finish     adapter + model card, loss.png and rewards.png

One process; no intermediate checkpoints (``--resume`` is for SFT runs). Shared pieces come
from ``lorakit.train`` (run directory, model build, optimizer groups, lr schedule, plan).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lorakit.fast import enable_fast_training
from lorakit.preference import losses, reference
from lorakit.preference.data import Pair, PreferenceData, load_preferences
from lorakit.preference.plots import plot_rewards
from lorakit.preference.step import NEEDS_REFERENCE, StepContext, kto_terms, pair_terms, reference_pair_logps
from lorakit.train import batching, build, optim
from lorakit.train.card import RunSummary, model_card
from lorakit.train.config import TrainConfig
from lorakit.train.config_io import to_dict
from lorakit.train.data import holdout
from lorakit.train.loop import TrainingDiverged
from lorakit.train.tracking import MetricsLog, plot_losses


@dataclass
class PrefRun:
    cfg: TrainConfig
    run_dir: Path
    tokenizer: object
    train: PreferenceData
    eval: PreferenceData | None
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ctx: StepContext
    total_steps: int
    warmup_steps: int
    ref_cache: dict | None = None  # split -> (chosen [N], rejected [N]) reference log-probs


def train_preference(cfg: TrainConfig, command: list[str]) -> Path:
    """Train ``cfg.method`` as ``cfg`` says; returns the adapter directory."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"method {cfg.method!r} runs in one process (no torchrun)")
    run = _setup(cfg)
    if cfg.precompute_ref:
        run.ref_cache = _reference_cache(run)
    last = _loop(run)
    return _finish(run, command, *last)


# ---- setup ----------------------------------------------------------------------------------
def _setup(cfg: TrainConfig) -> PrefRun:
    from lorakit.models import load_tokenizer

    build.check_inputs(cfg)
    if cfg.ref_adapter and not Path(cfg.ref_adapter).is_dir():
        raise FileNotFoundError(f"ref_adapter not found: {cfg.ref_adapter}")
    tokenizer = load_tokenizer(cfg.model)
    kw = dict(unpaired=cfg.method == "kto", max_seq_len=cfg.max_seq_len, skip_bad=cfg.on_bad_row == "skip")
    train = load_preferences(cfg.data, tokenizer, **kw)
    evals = load_preferences(cfg.eval_data, tokenizer, **kw) if cfg.eval_data else None
    if cfg.eval_split:
        train, evals = _split(train, cfg.eval_split, cfg.seed)
    plan = _plan(cfg, train, 0)
    per_epoch = batching.steps_in_epoch(plan, cfg.grad_accum, 1)
    if per_epoch == 0:
        raise ValueError(f"{cfg.data}: {len(train.items)} rows make fewer micro-batches than one "
                         f"optimizer step needs (batch_size {cfg.batch_size} x grad_accum {cfg.grad_accum})")
    total = cfg.max_steps or per_epoch * cfg.epochs
    taken = build.check_run_dir(cfg)
    torch.manual_seed(cfg.seed)
    # a reward model is a one-logit sequence classifier: built as a seq_cls (sft) run would be
    build_cfg = dataclasses.replace(cfg, task="seq_cls", method="sft") if cfg.method == "reward" else cfg
    model = build.build_model(build_cfg, 1, tokenizer.pad_token_id)
    if cfg.ref_adapter:
        reference.load_reference_adapter(model, cfg.ref_adapter)
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    build.prepare_run_dir(cfg, taken)  # only once the model and reference adapter are accepted
    model.train()
    fast = enable_fast_training(model) if cfg.fast else None
    ctx = StepContext(model, cfg.method, cfg.beta, cfg.simpo_gamma, cfg.desirable_weight,
                      cfg.undesirable_weight, bool(cfg.ref_adapter),
                      chunked=fast is not None and fast.chunked_loss and cfg.method != "reward",
                      pad_id=tokenizer.pad_token_id, autocast=build.autocast_enabled(cfg))
    groups = optim.param_groups(model, cfg.lr, cfg.weight_decay, cfg.loraplus_lr_ratio)
    run = PrefRun(cfg, Path(cfg.output_dir), tokenizer, train, evals, model, torch.optim.AdamW(groups),
                  ctx, total, math.ceil(cfg.warmup_ratio * total))
    _announce(run)
    return run


def _split(data: PreferenceData, fraction: float, seed: int) -> tuple[PreferenceData, PreferenceData]:
    held = holdout(len(data.items), fraction, seed, data.source, "rows")
    keep = [x for i, x in enumerate(data.items) if i not in held]
    out = [x for i, x in enumerate(data.items) if i in held]
    return (PreferenceData(keep, data.source, data.fmt, data.skipped),
            PreferenceData(out, data.source + " (eval split)", data.fmt))


def _plan(cfg: TrainConfig, data: PreferenceData, epoch: int, shuffle: bool = True) -> list:
    return batching.epoch_plan([x.length for x in data.items], cfg.batch_size, cfg.seed, epoch,
                               shuffle=shuffle)


def _announce(run: PrefRun) -> None:
    import lorakit

    trainable, total = lorakit.trainable_parameters(run.model)
    ref = "none" if run.cfg.method not in NEEDS_REFERENCE else (
        f"adapter {run.cfg.ref_adapter} (policy starts from it)" if run.cfg.ref_adapter
        else "the base (adapter disabled)")
    n_eval = len(run.eval.items) if run.eval else 0
    skipped = f", skipped {dict(run.train.skipped)}" if run.train.skipped else ""
    print(f"lorakit train: {run.cfg.method} on {run.cfg.model} ({run.cfg.precision}), trainable "
          f"{trainable:,} / {total:,} params; {run.train.fmt} preference data: {len(run.train.items)} "
          f"train / {n_eval} eval rows{skipped}; reference: {ref}; {run.total_steps} steps -> "
          f"{run.run_dir}", flush=True)


# ---- reference ------------------------------------------------------------------------------
def _reference_cache(run: PrefRun) -> dict:
    """Reference log-probs of every pair of every split, from the run directory's cache when it
    was written for the same tokens, base and reference adapter."""
    splits = {"train": run.train, **({"eval": run.eval} if run.eval else {})}
    rows = [[p.chosen.input_ids, p.rejected.input_ids] for d in splits.values() for p in d.items]
    key = reference.fingerprint(rows, run.cfg.model, run.cfg.ref_adapter)
    cached = reference.load_cache(run.run_dir, key)
    if cached is not None:
        print(f"lorakit train: reference log-probs from {run.run_dir / reference.CACHE_NAME}", flush=True)
        return {s: (cached[f"{s}.chosen"], cached[f"{s}.rejected"]) for s in splits}
    run.model.eval()
    out, flat = {}, {}
    for split, data in splits.items():
        chosen, rejected = [], []
        for micro_batch in _plan(run.cfg, data, 0, shuffle=False):
            c, r = reference_pair_logps(run.ctx, [data.items[row[0]] for row in micro_batch])
            chosen.append(c.cpu())
            rejected.append(r.cpu())
        order = [row[0] for mb in _plan(run.cfg, data, 0, shuffle=False) for row in mb]
        c_all, r_all = torch.empty(len(order)), torch.empty(len(order))
        c_all[order], r_all[order] = torch.cat(chosen), torch.cat(rejected)
        out[split] = (c_all, r_all)
        flat[f"{split}.chosen"], flat[f"{split}.rejected"] = c_all, r_all
    run.model.train()
    path = reference.save_cache(run.run_dir, key, flat)
    print(f"lorakit train: wrote reference log-probs to {path}", flush=True)
    return out


# ---- one micro-batch and one step -----------------------------------------------------------
def _terms(run: PrefRun, data: PreferenceData, split: str, indices: list[int]) -> losses.Terms:
    items = [data.items[i] for i in indices]
    if run.cfg.method == "kto":
        return kto_terms(run.ctx, items)
    cached = None
    if run.ref_cache is not None:
        c, r = run.ref_cache[split]
        cached = (c[indices], r[indices])
    return pair_terms(run.ctx, items, cached)


def _chosen_tokens(data: PreferenceData, indices: list[int]) -> int:
    """Chosen completion tokens of paired rows (ORPO's NLL normaliser; 0 for KTO rows)."""
    return sum(sum(t >= 0 for t in data.items[i].chosen.labels[1:]) for i in indices
               if isinstance(data.items[i], Pair))


def _cat(parts: list[losses.Terms]) -> losses.Terms:
    return losses.Terms(torch.cat([t.per_example.detach() for t in parts]),
                        torch.cat([t.chosen_rewards for t in parts]),
                        torch.cat([t.rejected_rewards for t in parts]))


def _step_counts(data: PreferenceData, micro_batches: list) -> tuple[list[list[int]], int, int]:
    """(row indices per micro-batch, rows, chosen tokens): what a step's loss is normalised by."""
    indices = [[row[0] for row in mb] for mb in micro_batches]
    return indices, sum(len(i) for i in indices), sum(_chosen_tokens(data, i) for i in indices)


def _train_step(run: PrefRun, local: list) -> tuple[float, float, dict]:
    """Accumulate the step's micro-batches, clip, step. Returns (loss, grad norm, metrics)."""
    indices, n_examples, n_tokens = _step_counts(run.train, local)
    loss_total, parts = 0.0, []
    for idx in indices:
        terms = _terms(run, run.train, "train", idx)
        loss = losses.step_loss(terms, n_examples, n_tokens)
        loss.backward()
        loss_total += loss.item()
        parts.append(terms)
    params = [p for p in run.model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, run.cfg.max_grad_norm or math.inf))
    if math.isfinite(loss_total) and math.isfinite(grad_norm):
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_total, grad_norm, losses.metrics(_cat(parts))


@torch.no_grad()
def _evaluate(run: PrefRun) -> dict:
    """Loss and reward metrics over the eval data, prefixed ``eval_``."""
    run.model.eval()
    indices, n_examples, n_tokens = _step_counts(run.eval, _plan(run.cfg, run.eval, 0, shuffle=False))
    total, parts = 0.0, []
    for idx in indices:
        terms = _terms(run, run.eval, "eval", idx)
        total += losses.step_loss(terms, n_examples, n_tokens).item()
        parts.append(terms)
    run.model.train()
    return {"eval_loss": total, **{f"eval_{k}": v for k, v in losses.metrics(_cat(parts)).items()}}


# ---- the loop -------------------------------------------------------------------------------
def _loop(run: PrefRun) -> tuple[int, float | None, dict | None]:
    cfg = run.cfg
    log = MetricsLog(run.run_dir, report_to=cfg.report_to, config=to_dict(cfg))
    bar = tqdm(total=run.total_steps, unit="step", dynamic_ncols=True, disable=not cfg.progress)
    step, epoch, in_epoch, loss, last_eval = 0, 0, 0, None, None
    plan, started = _plan(cfg, run.train, 0), time.perf_counter()
    try:
        while step < run.total_steps:
            if in_epoch >= batching.steps_in_epoch(plan, cfg.grad_accum, 1):
                epoch, in_epoch, plan = epoch + 1, 0, _plan(cfg, run.train, epoch + 1)
                continue
            local, _ = batching.step_micro_batches(plan, in_epoch, cfg.grad_accum, 0, 1)
            lr = optim.set_lr(run.optimizer, optim.lr_factor(step, run.total_steps, run.warmup_steps,
                                                             cfg.lr_scheduler))
            loss, grad_norm, metrics = _train_step(run, local)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise TrainingDiverged(f"step {step + 1}: loss {loss}, grad norm {grad_norm} (not "
                                       f"finite); stopped without writing an adapter. Try a lower lr "
                                       f"(now {cfg.lr}) or precision fp32.")
            step, in_epoch = step + 1, in_epoch + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{metrics.get('rewards/accuracies', float('nan')):.2f}",
                            margin=f"{metrics.get('rewards/margins', float('nan')):.3f}", lr=f"{lr:.2e}")
            if step % cfg.log_every == 0:
                log.write({"step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                           **metrics, "elapsed_s": time.perf_counter() - started})
            if run.eval and (step == run.total_steps or (cfg.eval_every and step % cfg.eval_every == 0)):
                last_eval = _evaluate(run)
                log.write({"step": step, **last_eval})
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
    finally:
        bar.close()
        log.close()
    return step, loss, last_eval


# ---- finish ---------------------------------------------------------------------------------
def _finish(run: PrefRun, command: list[str], steps: int, loss: float | None, last_eval: dict | None) -> Path:
    import lorakit

    model = run.model
    tensors = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    out = run.run_dir / "adapter"
    build.write_adapter(model, out, tensors)
    trainable, total = lorakit.trainable_parameters(model)
    eval_loss = last_eval["eval_loss"] if last_eval else None
    n_tokens = sum(x.length for x in run.train.items)
    summary = RunSummary(command, f"{run.train.fmt} preference ({run.cfg.method})", len(run.train.items),
                         len(run.eval.items) if run.eval else 0, n_tokens, dict(run.train.skipped), steps,
                         steps / max(1, batching.steps_in_epoch(_plan(run.cfg, run.train, 0), run.cfg.grad_accum, 1)),
                         loss, eval_loss, eval_loss, trainable, total, "completed")
    note = (f"Losses are the {run.cfg.method} loss, mean per pair (beta {run.cfg.beta}"
            + (f", reference adapter `{run.cfg.ref_adapter}`" if run.cfg.ref_adapter else "") + ").")
    card = re.sub(r"^Losses are mean cross-entropy.*$", note, model_card(run.cfg, summary), flags=re.M)
    (out / "README.md").write_text(card)
    plot_losses(run.run_dir / "metrics.jsonl", run.run_dir / "loss.png")
    plot_rewards(run.run_dir / "metrics.jsonl", run.run_dir / "rewards.png")
    print(f"lorakit train: completed at step {steps}; wrote {out}", flush=True)
    return out


__all__ = ["train_preference"]
