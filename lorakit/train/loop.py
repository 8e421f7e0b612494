"""``lorakit train``: the training loop, top to bottom.

    setup      world (torchrun or one process), run directory, seed
    data       tokenizer, train/eval data (every row checked before the model loads)
    model      base model, adapter (or full fine-tuning), DDP/FSDP wrapping
    optimizer  AdamW groups (LoRA+), lr schedule as a function of the step
    resume     trainable tensors, optimizer, data position, RNG from the latest checkpoint
    loop       per step: micro-batches of this process, token-normalised loss, backward,
               NaN/inf check, clipping, optimizer step; then log, eval, checkpoint, early stop,
               stop on request (a STOP file: checkpoint and return, see ``control``)
    finish     final eval, adapter + model card, loss.png

The math (loss normalisation, tokens/s, lr schedule, plan, checkpoint layout) lives in tested
modules next to this one; this file only orders the calls.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lorakit.fast import enable_fast_training
from lorakit.train import batching, build, checkpoint, control, distributed, losses, optim, tasks
from lorakit.train.card import RunSummary, model_card
from lorakit.train.config import TrainConfig
from lorakit.train.config_io import to_dict
from lorakit.train.tracking import MetricsLog, plot_losses


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/inf; no adapter was written."""


@dataclass
class Progress:
    """The loop state a checkpoint stores besides tensors."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_eval: float | None = None
    evals_since_best: int = 0
    last_eval: float | None = None
    last_loss: float | None = None


@dataclass
class Run:
    """Everything the loop works with (built once in ``_setup``)."""

    cfg: TrainConfig
    world: distributed.World
    run_dir: Path
    tokenizer: object
    train: object
    eval: object
    model: torch.nn.Module      # what the loop calls (DDP-wrapped or sharded)
    optimizer: torch.optim.Optimizer
    total_steps: int
    warmup_steps: int
    fingerprint: str
    fast: object = None         # lorakit.fast handle when cfg.fast applies (docs/performance.md)
    stopped: bool = False       # stopped on request (control.STOP_FILE) after a checkpoint


def train(cfg: TrainConfig, resume: bool = False, command: list[str] | None = None) -> Path:
    """Train as ``cfg`` says and return the output directory (adapter, or model for ``full``).

    The task and method pick the runner (``lorakit.train.tasks``): this file's loop for
    ``sft`` on text, the preference loop, the image or the diffusion trainer. With ``resume``
    the run continues from the newest checkpoint in ``cfg.output_dir``. A run stopped on
    request (``control.request_stop``) returns the checkpoint it wrote instead. Raises
    ``TrainingDiverged`` on a NaN/inf loss (checkpoints are kept).
    """
    return tasks.run(cfg, resume, command or ["python", "-c", "lorakit.train.train(...)"])


def train_sft(cfg: TrainConfig, resume: bool, command: list[str]) -> Path:
    """The supervised loop of this file (tasks causal_lm and seq_cls, method sft)."""
    world = distributed.init_world()
    try:
        run = _setup(cfg, world, resume)
        progress = _resume(run) if resume else Progress()
        progress = _loop(run, progress)
        if run.stopped:
            return _stopped(run, progress)
        return _finish(run, progress, command)
    finally:
        distributed.close_world(world)


# ---- setup ----------------------------------------------------------------------------------
def _setup(cfg: TrainConfig, world: distributed.World, resume: bool) -> Run:
    from lorakit.models import load_tokenizer

    build.check_inputs(cfg)
    tokenizer = load_tokenizer(cfg.model)
    train_data, eval_data = build.load_training_data(cfg, tokenizer)
    total = _total_steps(cfg, train_data, world)
    taken = [] if resume else build.check_run_dir(cfg)
    torch.manual_seed(cfg.seed)
    n_labels = cfg.num_labels or len(train_data.label_names or [])
    model = build.build_model(cfg, n_labels, tokenizer.pad_token_id).to(world.device)
    if not resume:  # only once the model and adapter are built: a bad setting leaves no files
        distributed.barrier(world)  # every process has checked before rank 0 changes anything
        if world.is_main:
            build.prepare_run_dir(cfg, taken)
        distributed.barrier(world)
    run_dir = Path(cfg.output_dir)
    if world.is_main:
        control.clear_stop(run_dir)  # a request left from before this process started
    distributed.barrier(world)
    model.train()
    torch.manual_seed(cfg.seed + world.rank)  # per-process dropout streams
    fast = enable_fast_training(model) if cfg.fast and not cfg.full and world.size == 1 else None
    wrapped = distributed.wrap(model, world, cfg.fsdp)
    groups = optim.param_groups(wrapped, cfg.lr, cfg.weight_decay, cfg.loraplus_lr_ratio)
    run = Run(cfg, world, run_dir, tokenizer, train_data, eval_data, wrapped,
              torch.optim.AdamW(groups), total, math.ceil(cfg.warmup_ratio * total),
              build.data_fingerprint(train_data), fast)
    _announce(run, model)
    return run


def _plan(cfg: TrainConfig, data, epoch: int) -> list:
    lengths = [len(e.input_ids) for e in data.examples]
    return batching.epoch_plan(lengths, cfg.batch_size, cfg.seed, epoch, cfg.packing, cfg.max_seq_len)


def _total_steps(cfg: TrainConfig, data, world: distributed.World) -> int:
    first = batching.steps_in_epoch(_plan(cfg, data, 0), cfg.grad_accum, world.size)
    if first == 0:
        raise ValueError(f"{cfg.data}: {len(data.examples)} examples make fewer micro-batches than "
                         f"one optimizer step needs (batch_size {cfg.batch_size} x grad_accum "
                         f"{cfg.grad_accum} x {world.size} processes)")
    if cfg.max_steps:
        return cfg.max_steps
    return sum(batching.steps_in_epoch(_plan(cfg, data, e), cfg.grad_accum, world.size)
               for e in range(cfg.epochs))


def _announce(run: Run, model: torch.nn.Module) -> None:
    if not run.world.is_main:
        return
    import lorakit

    trainable, total = lorakit.trainable_parameters(model)
    skipped = f", skipped {dict(run.train.skipped)}" if run.train.skipped else ""
    n_eval = len(run.eval.examples) if run.eval else 0
    print(f"lorakit train: {run.cfg.model} ({run.cfg.task}, {run.cfg.precision}), "
          f"trainable {trainable:,} / {total:,} params; data {run.train.fmt}: "
          f"{len(run.train.examples)} train / {n_eval} eval examples{skipped}; "
          f"{run.total_steps} steps on {run.world.size} process(es) -> {run.run_dir}", flush=True)


# ---- resume ---------------------------------------------------------------------------------
def _resume(run: Run) -> Progress:
    path = checkpoint.latest_checkpoint(run.run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint to resume from in {run.run_dir / 'checkpoints'}")
    saved = checkpoint.load_checkpoint(path)
    state = saved["state"]
    if state["fingerprint"] != run.fingerprint:
        raise ValueError(f"{path}: the training data changed since this checkpoint was written; "
                         "resuming would not continue the same run")
    if len(saved["rng"]) != run.world.size:
        raise ValueError(f"{path}: written by {len(saved['rng'])} process(es); resume with the "
                         f"same number (now {run.world.size})")
    distributed.load_trainable(run.model, saved["trainable"])
    distributed.load_optimizer(run.model, run.optimizer, saved["optimizer"], run.world)
    checkpoint.restore_rng(saved["rng"][run.world.rank])
    if run.world.is_main:
        print(f"lorakit train: resumed from {path} (step {state['step']})", flush=True)
    return Progress(**state["progress"])


# ---- one optimizer step ---------------------------------------------------------------------
def _forward_loss(run: Run, batch: dict) -> torch.Tensor:
    """Summed loss of one micro-batch (see ``losses``)."""
    labels = batch.pop("labels").to(run.world.device)
    inputs = {k: v.to(run.world.device) for k, v in batch.items()}
    if run.cfg.task == "causal_lm":
        inputs["use_cache"] = False
    with torch.autocast(run.world.device.type, dtype=torch.bfloat16,
                        enabled=build.autocast_enabled(run.cfg)):
        if run.fast is not None and run.cfg.task == "causal_lm" and run.fast.chunked_loss:
            return run.fast.loss_sum(labels, **inputs)  # = loss_sum(logits, labels), no logits kept
        logits = run.model(**inputs).logits
    return losses.loss_sum(logits, labels)


def _train_step(run: Run, local: list, step_targets: int) -> tuple[float, float]:
    """Accumulate this process's micro-batches, clip, step. Returns (mean loss, grad norm)."""
    scale = losses.loss_scale(step_targets, run.world.size)
    loss_total = 0.0
    for i, micro_batch in enumerate(local):
        # Gradients are all-reduced once, on the last micro-batch of the step.
        last = i == len(local) - 1
        sync = nullcontext() if last or not hasattr(run.model, "no_sync") else run.model.no_sync()
        with sync:
            loss = _forward_loss(run, batching.collate(run.train.examples, micro_batch,
                                                       run.tokenizer.pad_token_id))
            (loss * scale).backward()
        loss_total += loss.item()
    mean_loss = distributed.sum_all([loss_total], run.world)[0] / step_targets
    params = [p for p in run.model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, run.cfg.max_grad_norm or math.inf))
    if not (math.isfinite(mean_loss) and math.isfinite(grad_norm)):
        run.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return mean_loss, grad_norm


def _diverged(run: Run, progress: Progress, loss: float, grad_norm: float) -> TrainingDiverged:
    last = checkpoint.latest_checkpoint(run.run_dir)
    keep = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    return TrainingDiverged(
        f"step {progress.step + 1}: loss {loss}, grad norm {grad_norm} (not finite); stopped "
        f"without an optimizer step and without writing an adapter; {keep}. Try a lower lr "
        f"(now {run.cfg.lr}), max_grad_norm > 0, or precision fp32.")


@torch.no_grad()
def _evaluate(run: Run) -> float:
    """Mean loss per target token over the eval data (all processes together)."""
    data, cfg = run.eval, run.cfg
    lengths = [len(e.input_ids) for e in data.examples]
    plan = batching.epoch_plan(lengths, cfg.batch_size, cfg.seed, 0, cfg.packing,
                               cfg.max_seq_len, shuffle=False)
    run.model.eval()
    total, targets = 0.0, 0
    for micro_batch in plan[run.world.rank::run.world.size]:
        batch = batching.collate(data.examples, micro_batch, run.tokenizer.pad_token_id)
        targets += losses.count_targets(batch["labels"])
        total += _forward_loss(run, batch).item()
    run.model.train()
    total, targets = distributed.sum_all([total, targets], run.world)
    return total / targets


# ---- the loop -------------------------------------------------------------------------------
def _loop(run: Run, progress: Progress) -> Progress:
    """Run optimizer steps until done or stopped; the bar and metrics file always close."""
    main = run.world.is_main
    log = MetricsLog(run.run_dir, progress.step if progress.step else None, run.cfg.report_to,
                     to_dict(run.cfg)) if main else None
    bar = tqdm(total=run.total_steps, initial=progress.step, unit="step", dynamic_ncols=True,
               disable=not (run.cfg.progress and main))
    try:
        _steps(run, progress, log, bar)
    finally:
        bar.close()
        if log:
            log.close()
    return progress


def _steps(run: Run, progress: Progress, log: MetricsLog | None, bar) -> None:
    cfg, world = run.cfg, run.world
    targets = [losses.count_targets(torch.tensor([e.labels])) for e in run.train.examples]
    lengths = [len(e.input_ids) for e in run.train.examples]
    plan = _plan(cfg, run.train, progress.epoch)
    started, window_tokens, window_start = time.perf_counter(), 0, time.perf_counter()
    while progress.step < run.total_steps:
        if progress.step_in_epoch >= batching.steps_in_epoch(plan, cfg.grad_accum, world.size):
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
            plan = _plan(cfg, run.train, progress.epoch)
            continue
        local, everyone = batching.step_micro_batches(plan, progress.step_in_epoch,
                                                      cfg.grad_accum, world.rank, world.size)
        in_step = [i for micro_batch in everyone for row in micro_batch for i in row]
        lr = optim.set_lr(run.optimizer, optim.lr_factor(progress.step, run.total_steps,
                                                         run.warmup_steps, cfg.lr_scheduler))
        loss, grad_norm = _train_step(run, local, sum(targets[i] for i in in_step))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise _diverged(run, progress, loss, grad_norm)
        progress.step, progress.step_in_epoch = progress.step + 1, progress.step_in_epoch + 1
        progress.last_loss = loss
        window_tokens += sum(lengths[i] for i in in_step)  # all processes' tokens
        speed = losses.tokens_per_second(window_tokens, time.perf_counter() - window_start)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{speed:.0f}")
        if log and progress.step % cfg.log_every == 0:
            log.write({"step": progress.step, "epoch": progress.epoch, "loss": loss, "lr": lr,
                       "grad_norm": grad_norm, "tokens": window_tokens, "tokens_per_s": speed,
                       "elapsed_s": time.perf_counter() - started})
            window_tokens, window_start = 0, time.perf_counter()
        if _after_step(run, progress, log, bar):
            return


def _after_step(run: Run, progress: Progress, log: MetricsLog | None, bar) -> bool:
    """Eval, early stopping and checkpointing after a step; True when training should stop."""
    cfg, done = run.cfg, progress.step >= run.total_steps
    stop = False
    if run.eval and (done or (cfg.eval_every and progress.step % cfg.eval_every == 0)):
        progress.last_eval = _evaluate(run)
        if progress.best_eval is None or progress.last_eval < progress.best_eval:
            progress.best_eval, progress.evals_since_best = progress.last_eval, 0
        else:
            progress.evals_since_best += 1
        stop = bool(cfg.early_stopping_patience) and \
            progress.evals_since_best >= cfg.early_stopping_patience
        if log:
            log.write({"step": progress.step, "eval_loss": progress.last_eval})
            bar.write(f"step {progress.step}: eval loss {progress.last_eval:.4f}"
                      + (" (early stopping)" if stop else ""))
    saving = cfg.save_every and progress.step % cfg.save_every == 0 and not done and not stop
    if not done and not stop and control.stop_requested(run.run_dir, run.world):
        run.stopped = stop = saving = True
    if saving:
        _save(run, progress)
    return stop


def _save(run: Run, progress: Progress) -> None:
    names = [n for n, p in distributed.unwrap(run.model).named_parameters() if p.requires_grad]
    tensors = distributed.full_state(run.model, names, run.world)
    optimizer_state = distributed.optimizer_state(run.model, run.optimizer, run.world)
    rng = distributed.gather_all(checkpoint.capture_rng(), run.world)
    if run.world.is_main:
        state = {"progress": asdict(progress), "fingerprint": run.fingerprint}
        extra = None if run.cfg.full else (
            lambda d: build.write_adapter(distributed.unwrap(run.model), d / "adapter", tensors))
        checkpoint.save_checkpoint(run.run_dir, progress.step, tensors, optimizer_state, state,
                                   rng, run.cfg.keep_last, extra)
    distributed.barrier(run.world)


# ---- finish ---------------------------------------------------------------------------------
def _stopped(run: Run, progress: Progress) -> Path:
    """A stop on request: the checkpoint is written; remove the request, say how to resume."""
    path = checkpoint.checkpoint_dir(run.run_dir, progress.step)
    if run.world.is_main:
        control.clear_stop(run.run_dir)
        print(f"lorakit train: stopped on request at step {progress.step}; checkpoint {path}; "
              f"continue with `lorakit train --resume {run.run_dir}`", flush=True)
    distributed.barrier(run.world)
    return path


def _finish(run: Run, progress: Progress, command: list[str]) -> Path:
    """Write the final adapter (or model) with its model card, and loss.png."""
    import lorakit

    model = distributed.unwrap(run.model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    tensors = distributed.full_state(run.model, names, run.world)
    out = run.run_dir / ("model" if run.cfg.full else "adapter")
    if run.world.is_main:
        if run.cfg.full:
            build.write_full_model(model, out, tensors, run.tokenizer)
        else:
            build.write_adapter(model, out, tensors)
            run.tokenizer.save_pretrained(out)  # tokenizer and chat template beside the adapter
        trainable, total = lorakit.trainable_parameters(model)
        stopped = "completed" if progress.step >= run.total_steps else "early stopping"
        plan_steps = batching.steps_in_epoch(_plan(run.cfg, run.train, progress.epoch),
                                             run.cfg.grad_accum, run.world.size)
        summary = RunSummary(
            command, run.train.fmt, len(run.train.examples), len(run.eval.examples) if run.eval else 0,
            run.train.n_tokens(), dict(run.train.skipped), progress.step,
            progress.epoch + progress.step_in_epoch / max(1, plan_steps),
            progress.last_loss, progress.last_eval, progress.best_eval, trainable, total, stopped)
        (out / "README.md").write_text(model_card(run.cfg, summary))
        plot_losses(run.run_dir / "metrics.jsonl", run.run_dir / "loss.png")
        print(f"lorakit train: {stopped} at step {progress.step}; wrote {out}", flush=True)
    distributed.barrier(run.world)
    return out
