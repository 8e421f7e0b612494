"""What a run is built from: its directory, its data, its model; and what it leaves behind.

Everything here runs before the first optimizer step, so a bad path, a bad row or an invalid
setting stops the run before any training (and before the model is loaded, where possible).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import torch
from torch import nn

from lorakit.paths import check_output_dir
from lorakit.train.config import TrainConfig
from lorakit.train.config_io import to_yaml
from lorakit.train.data import TokenizedData, load_data, split_eval
from lorakit.train.tasks import TASKS

# Files and folders a run writes; --overwrite removes exactly these, nothing else.
RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "loss.png", "checkpoints", "adapter", "model",
               "tensorboard", "wandb", "mlruns")
_HEADS = ("score", "classifier")  # seq_cls heads of Hugging Face models, trained in full


def check_inputs(cfg: TrainConfig) -> None:
    """Settings that name inputs: checked before anything is loaded."""
    from lorakit.train.trackers import check_trackers

    if not (cfg.data or cfg.data_mix):
        raise ValueError("config: data is required (a data file, a saved datasets directory, "
                         "hf:org/name, or several sources with weights in data_mix)")
    check_trackers(cfg.report_to)
    sources = [("data", cfg.data), ("eval_data", cfg.eval_data)]
    for key, path in sources + [("data_mix", p) for p in cfg.data_mix]:
        if path and not path.startswith("hf:") and not Path(path).exists():
            raise FileNotFoundError(f"{key} not found: {path}")
    check_output_dir(cfg.output_dir, "output_dir")
    if cfg.task != "image_classification":
        from lorakit.vision.checks import image_input_reason

        reason = image_input_reason(cfg.model, [cfg.data, cfg.eval_data])
        if reason:
            raise ValueError(f"{reason}; task {cfg.task!r} trains a text model "
                             "(use --task image_classification, docs/vision.md)")


def check_run_dir(cfg: TrainConfig) -> list[str]:
    """The run outputs already in ``cfg.output_dir`` (to be replaced); an error unless
    ``overwrite`` is set. A run that stopped before its first optimizer step (only its config,
    an empty metrics file, TensorBoard headers) holds nothing, so it never blocks a re-run."""
    run_dir = Path(cfg.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"output_dir {run_dir} is a file, not a directory")
    taken = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if any(_holds_results(run_dir / name) for name in taken) and not cfg.overwrite:
        raise ValueError(f"output_dir {run_dir} already holds a run ({', '.join(taken)}); resume "
                         f"it with `lorakit train --resume {run_dir}`, choose another output_dir, "
                         "or pass --overwrite")
    return taken


def _holds_results(path: Path) -> bool:
    if path.name in ("config.yaml", "tensorboard", "wandb", "mlruns"):
        return False
    if path.name == "metrics.jsonl":
        return path.stat().st_size > 0
    if path.name == "checkpoints":
        return any(path.iterdir())
    return True


def prepare_run_dir(cfg: TrainConfig, taken: list[str]) -> Path:
    """Remove the previous run's outputs ``taken``, create the directory, write the resolved
    ``config.yaml`` (rank 0 only)."""
    run_dir = Path(cfg.output_dir)
    for name in taken:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    return run_dir


def data_kwargs(cfg: TrainConfig) -> dict:
    """``load_data`` keyword arguments of a config."""
    return dict(fmt=cfg.format, template=cfg.instruction_template,
                completion_only=cfg.completion_only_loss, max_seq_len=cfg.max_seq_len,
                skip_bad=cfg.on_bad_row == "skip", columns=cfg.columns)


def load_train_source(cfg: TrainConfig, tokenizer, kw: dict) -> TokenizedData:
    """The training set: ``data``, or the ``data_mix`` sources mixed by weight."""
    if not cfg.data_mix:
        return load_data(cfg.data, tokenizer, **kw)
    from lorakit.train.mix import mix

    return mix([(load_data(src, tokenizer, **kw), w) for src, w in cfg.data_mix.items()], cfg.seed)


def load_training_data(cfg: TrainConfig, tokenizer) -> tuple[TokenizedData, TokenizedData | None]:
    """Train and eval data, tokenized and checked (see ``lorakit.train.data``)."""
    kw = data_kwargs(cfg)
    train = load_train_source(cfg, tokenizer, kw)
    if (train.fmt == "classification") != (cfg.task == "seq_cls"):
        raise ValueError(f"{train.source}: {train.fmt} data does not fit task {cfg.task!r} "
                         "(classification data <-> task seq_cls)")
    if cfg.eval_data:
        fmt = cfg.format if "+" in train.fmt else train.fmt  # a mix of formats: detect per file
        return train, load_data(cfg.eval_data, tokenizer, **{**kw, "fmt": fmt},
                                label_names=train.label_names)
    if cfg.eval_split:
        return split_eval(train, cfg.eval_split, cfg.seed)
    return train, None


def data_fingerprint(data: TokenizedData) -> str:
    """A hash of the tokenized training set: a resumed run must see the same data."""
    h = hashlib.sha256()
    for e in data.examples:
        h.update(repr((e.input_ids, e.labels)).encode())
    return h.hexdigest()[:16]


def _dtypes(precision: str) -> tuple[torch.dtype, bool]:
    """(base weight dtype, bf16 autocast) of a precision setting."""
    return {"fp32": (torch.float32, False), "bf16-mixed": (torch.float32, True),
            "bf16-true": (torch.bfloat16, True)}[precision]


def build_model(cfg: TrainConfig, num_labels: int, pad_token_id: int) -> nn.Module:
    """Load the base model, quantize it if asked, add the adapter (or unfreeze all for
    ``full``), and keep trainable parameters in fp32."""
    import lorakit
    from lorakit.models import load_model

    dtype, _ = _dtypes(cfg.precision)
    model = load_model(cfg.model, dtype=dtype, task=cfg.task, num_labels=num_labels or None)
    if cfg.task == "seq_cls" and model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    if cfg.quantize == "nf4":
        from lorakit.quant import quantize

        quantize(model, "nf4")
    if cfg.full:
        model.requires_grad_(True)
    else:
        lorakit.add_adapter(model, _adapter_config(cfg, model))
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # fp32 master weights; bf16 compute comes from autocast
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with a frozen embedding (no input grads needed).
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def _adapter_config(cfg: TrainConfig, model: nn.Module):
    """``cfg.lora`` plus the bookkeeping PEFT stores, and the seq_cls head in modules_to_save."""
    saved = list(cfg.lora.modules_to_save or [])
    if cfg.task == "seq_cls":
        head = next((h for h in _HEADS if hasattr(model, h)), None)
        if head is None:
            raise ValueError(f"{cfg.model}: no classification head named one of {list(_HEADS)}")
        saved += [head] if head not in saved else []
    return dataclasses.replace(cfg.lora, modules_to_save=saved or None,
                               task_type=TASKS[cfg.task].peft_task_type, base_model_name_or_path=base_model_id(cfg.model))


def base_model_id(model: str) -> str:
    """What other tools load as the base: an embedded model's Hub id (its GGUF holds the Q4_1
    weights of that model), else the name or directory as given."""
    from lorakit.models import EMBEDDED_HUB_IDS

    return EMBEDDED_HUB_IDS.get(model, model)


def autocast_enabled(cfg: TrainConfig) -> bool:
    return _dtypes(cfg.precision)[1]


def write_adapter(model: nn.Module, directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write the adapter as a PEFT directory from ``tensors`` (parameter name -> full tensor,
    gathered from every process), under the keys ``adapter_state_dict`` names them by, through
    ``formats.peft.write_adapter`` (atomic; dtypes and ranks checked as ``save_adapter`` does)."""
    from lorakit import adapter_configs, adapter_state_dict
    from lorakit.formats import peft

    names = {id(p): n for n, p in model.named_parameters()}
    peft_tensors = {key: tensors[names[id(p)]] for key, p in adapter_state_dict(model).items()}
    config = adapter_configs(model)["default"]  # a LoraConfig: training adds plain LoRA adapters
    peft.write_adapter(directory, peft_tensors, config.to_peft_dict(), config.rank_for)


def write_full_model(model: nn.Module, directory: Path, tensors: dict[str, torch.Tensor],
                     tokenizer) -> None:
    """Write a fully fine-tuned model as a Hugging Face directory (weights, config, tokenizer)."""
    model.save_pretrained(directory, state_dict=tensors)
    tokenizer.save_pretrained(directory)
