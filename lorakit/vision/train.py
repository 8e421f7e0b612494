"""``lorakit train --task image_classification``: the image training loop, top to bottom.

    data       train/eval images (every file opened and verified before the model loads)
    model      image classifier with a new head for the data's labels; LoRA on the targets and
               the head in ``modules_to_save`` (or ``full``: every parameter trains)
    fit        per step: augmented images -> the model's preprocessing -> mean cross-entropy
               over the step's images, backward, clipping, AdamW step; eval (loss, accuracy)
               every ``eval_every`` steps and at the end; early stopping on eval loss
    finish     adapter + ``label_map.json`` (+ the image processor), metrics.jsonl, loss.png

Frozen BatchNorm layers stay in eval mode while the adapter trains: their running statistics
are buffers the adapter file does not carry, so updating them would make the trained adapter
behave differently on the original base (full fine-tuning updates and saves them).

One process; no intermediate checkpoints, so ``--resume`` is refused for image runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lorakit.formats import label_map
from lorakit.train import build, optim
from lorakit.train.config import TrainConfig
from lorakit.train.tracking import MetricsLog, plot_losses
from lorakit.vision import models
from lorakit.vision.data import ImageData, load_images, split_images
from lorakit.vision.evaluate import predict
from lorakit.vision.metrics import classification_report
from lorakit.vision.transforms import Preprocess, augment

__all__ = ["FitOptions", "FitResult", "fit", "train_images", "freeze_batchnorm_stats", "should_stop"]


@dataclass
class FitOptions:
    epochs: int = 1
    max_steps: int = 0
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    loraplus_lr_ratio: float = 0.0
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    augment: str = "crop-flip"
    augment_min_scale: float = 0.08
    eval_every: int = 0
    early_stopping_patience: int = 0
    log_every: int = 1
    seed: int = 0
    autocast: bool = False
    freeze_all_batchnorm: bool = False  # every BatchNorm in eval mode (small-batch full FT)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "FitOptions":
        names = {f.name for f in dataclasses.fields(cls)} - {"autocast", "freeze_all_batchnorm"}
        return cls(**{n: getattr(cfg, n) for n in names}, autocast=build.autocast_enabled(cfg))


@dataclass
class FitResult:
    steps: int
    last_loss: float | None
    seconds: float
    evals: list[dict] = field(default_factory=list)   # {"step", "eval_loss", "accuracy", ...}
    stopped: str = "completed"


def freeze_batchnorm_stats(model: nn.Module, every: bool = False) -> int:
    """Put every BatchNorm whose parameters are all frozen (``every``: every BatchNorm; its
    affine parameters still train) in eval mode; returns how many."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and \
                (every or not any(p.requires_grad for p in m.parameters())):
            m.eval()
            count += 1
    return count


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _steps_per_epoch(n: int, opts: FitOptions) -> int:
    return max(1, math.ceil(math.ceil(n / opts.batch_size) / opts.grad_accum))


def _pixels(data: ImageData, index: list[int], preprocess: Preprocess, opts: FitOptions,
            g: torch.Generator) -> torch.Tensor:
    images = [augment(data.image(i), preprocess.size, opts.augment, opts.augment_min_scale, g)
              for i in index]
    return preprocess(images)


def _step(model, params, optimizer, micro, data, preprocess, opts, g, device) -> tuple[float, float]:
    """One optimizer step over micro-batches ``micro``: mean cross-entropy over their images."""
    n_images = sum(len(m) for m in micro)
    total = 0.0
    for index in micro:
        x = _pixels(data, index, preprocess, opts, g).to(device)
        y = torch.tensor([data.labels[i] for i in index], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.autocast):
            out = models.logits(model, x)
        loss = nn.functional.cross_entropy(out.float(), y, reduction="sum")
        (loss / n_images).backward()
        total += loss.item()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm or math.inf))
    if math.isfinite(total) and math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / n_images, grad_norm


def fit(model: nn.Module, preprocess: Preprocess, train: ImageData, evals: ImageData | None,
        opts: FitOptions, log: MetricsLog | None = None, progress: bool = False) -> FitResult:
    """Train ``model``'s trainable parameters on ``train`` (see the module docstring)."""
    per_epoch = _steps_per_epoch(len(train), opts)
    total = opts.max_steps or per_epoch * opts.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(optim.param_groups(model, opts.lr, opts.weight_decay,
                                                     opts.loraplus_lr_ratio))
    g = torch.Generator().manual_seed(opts.seed)
    bar = tqdm(total=total, unit="step", dynamic_ncols=True, disable=not progress)
    try:
        return _fit_steps(model, preprocess, train, evals, opts, log, bar, optimizer, params, g, total)
    finally:
        bar.close()


def _fit_steps(model, preprocess, train, evals, opts, log, bar, optimizer, params, g, total) -> FitResult:
    from lorakit.train.loop import TrainingDiverged

    device = next(model.parameters()).device
    warmup = math.ceil(opts.warmup_ratio * total)
    result, started, step, epoch = FitResult(0, None, 0.0), time.perf_counter(), 0, 0
    while step < total:
        plan = _batches(len(train), opts.batch_size, opts.seed, epoch)
        for start in range(0, len(plan), opts.grad_accum):
            if step >= total:
                break
            model.train()
            freeze_batchnorm_stats(model, every=opts.freeze_all_batchnorm)
            lr = optim.set_lr(optimizer, optim.lr_factor(step, total, warmup, opts.lr_scheduler))
            t0 = time.perf_counter()
            micro = plan[start:start + opts.grad_accum]
            loss, grad_norm = _step(model, params, optimizer, micro, train, preprocess, opts, g, device)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise TrainingDiverged(f"step {step + 1}: loss {loss}, grad norm {grad_norm} (not "
                                       f"finite); no adapter written. Try a lower lr (now {opts.lr}).")
            step += 1
            result.steps, result.last_loss = step, loss
            n_images = sum(len(m) for m in micro)
            if log and step % opts.log_every == 0:
                log.write({"step": step, "epoch": epoch, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                           "images_per_s": n_images / (time.perf_counter() - t0),
                           "elapsed_s": time.perf_counter() - started})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if evals is not None and (step == total or (opts.eval_every and step % opts.eval_every == 0)):
                if _eval_and_stop(model, preprocess, evals, opts, log, result, step):
                    result.stopped = "early stopping"
                    result.seconds = time.perf_counter() - started
                    return result
        epoch += 1
    result.seconds = time.perf_counter() - started
    return result


def _eval_and_stop(model, preprocess, data: ImageData, opts: FitOptions, log, result: FitResult,
                   step: int) -> bool:
    """Evaluate, record it; True when early stopping says stop (no better eval loss in the
    last ``early_stopping_patience`` evals)."""
    preds, loss = predict(model, preprocess, data, opts.batch_size, autocast=opts.autocast)
    report = classification_report([p[0] for p in preds], data.labels, data.label_names)
    record = {"step": step, "eval_loss": loss, "eval_accuracy": report["accuracy"],
              "eval_macro_f1": report["macro_f1"]}
    result.evals.append(record)
    if log:
        log.write(record)
    return should_stop([r["eval_loss"] for r in result.evals], opts.early_stopping_patience)


def should_stop(eval_losses: list[float], patience: int) -> bool:
    """Early stopping: the last ``patience`` eval losses are none below the best before them
    (``patience`` 0: never)."""
    if not patience or len(eval_losses) <= patience:
        return False
    best_before = min(eval_losses[:-patience])
    return all(loss >= best_before for loss in eval_losses[-patience:])


# ---- lorakit train --------------------------------------------------------------------------
def _check(cfg: TrainConfig, resume: bool) -> None:
    refused = [(resume, "--resume (image runs write no intermediate checkpoints)"),
               (cfg.quantize != "none", f"quantize={cfg.quantize}"), (cfg.packing, "packing"),
               (cfg.fsdp, "fsdp"), (cfg.gradient_checkpointing, "gradient_checkpointing"),
               (cfg.format not in ("auto",), f"format={cfg.format} (image data is detected)")]
    for bad, what in refused:
        if bad:
            raise ValueError(f"config: task image_classification does not support {what}")
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("task image_classification runs in one process (not under torchrun)")


def _load_data(cfg: TrainConfig) -> tuple[ImageData, ImageData | None]:
    train = load_images(cfg.data)
    if cfg.eval_data:
        return train, load_images(cfg.eval_data, label_names=train.label_names)
    if cfg.eval_split:
        return split_images(train, cfg.eval_split, cfg.seed)
    return train, None


def _prepare(cfg: TrainConfig, im: models.ImageModel) -> None:
    import lorakit

    if cfg.full:  # every weight trains, so all of it (buffers too) is fp32 master weights
        im.model.float().requires_grad_(True)
    else:
        saved = list(cfg.lora.modules_to_save or [])
        saved += [im.head] if im.head not in saved else []
        lorakit.add_adapter(im.model, dataclasses.replace(
            cfg.lora, modules_to_save=saved, base_model_name_or_path=cfg.model))
    for p in im.model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def _write(cfg: TrainConfig, im: models.ImageModel, label_names: list[str], out: Path) -> None:
    import lorakit
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    if not cfg.full:
        lorakit.save_adapter(im.model, out)
    elif hasattr(im.model, "save_pretrained"):
        im.model.save_pretrained(out)
    else:
        save_file({k: v.contiguous() for k, v in im.model.state_dict().items()},
                  str(out / "model.safetensors"))
    label_map.save_labels(out, label_names, cfg.model, cfg.image_size)
    processor = getattr(im.preprocess, "processor", None)
    if processor is not None:
        processor.save_pretrained(out)


def train_images(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train as ``cfg`` says (``cfg.task == "image_classification"``); returns the output
    directory (``adapter``, or ``model`` for ``full``)."""
    _check(cfg, resume)
    build.check_inputs(cfg)
    train, evals = _load_data(cfg)
    if cfg.num_labels and cfg.num_labels != len(train.label_names):
        raise ValueError(f"config: num_labels={cfg.num_labels} but {cfg.data} has "
                         f"{len(train.label_names)} labels {train.label_names}")
    taken = build.check_run_dir(cfg)
    run_dir = build.prepare_run_dir(cfg, taken)
    torch.manual_seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.precision == "bf16-true" else torch.float32
    im = models.load_image_model(cfg.model, train.label_names, cfg.image_size, dtype)
    _prepare(cfg, im)
    import lorakit

    trainable, total = lorakit.trainable_parameters(im.model)
    print(f"lorakit train: {cfg.model} (image_classification, {cfg.precision}), trainable "
          f"{trainable:,} / {total:,} params; data {train.fmt}: {len(train)} train / "
          f"{len(evals) if evals else 0} eval images, {len(train.label_names)} labels -> {run_dir}",
          flush=True)
    log = MetricsLog(run_dir)
    try:
        result = fit(im.model, im.preprocess, train, evals, FitOptions.from_config(cfg), log,
                     progress=cfg.progress)
    finally:
        log.close()
    out = run_dir / ("model" if cfg.full else "adapter")
    _write(cfg, im, train.label_names, out)
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
    last = result.evals[-1] if result.evals else {}
    score = f", eval accuracy {last['eval_accuracy']:.4f}" if last else ""
    print(f"lorakit train: {result.stopped} at step {result.steps} in {result.seconds:.1f} s"
          f"{score}; wrote {out}", flush=True)
    return out
