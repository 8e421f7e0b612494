"""diffusers' LoRA files: what ``pipe.save_lora_weights`` writes and ``pipe.load_lora_weights`` /
``unet.load_lora_adapter(path, prefix="unet")`` read.

One safetensors file (``pytorch_lora_weights.safetensors`` in a directory) with PEFT keys under
the component's name, no adapter name:

    unet.<module path>.lora_A.weight          A [r, in]  (conv: [r, in, kh, kw])
    unet.<module path>.lora_B.weight          B [out, r] (conv: [out, r, 1, 1])
    unet.<module path>.lora_magnitude_vector  DoRA's magnitude [out]
    text_encoder.<module path>.lora_A.weight  ...

and in the file's metadata ``lora_adapter_metadata``: JSON of each component's PEFT
``LoraConfig`` fields prefixed by the component (``"unet.r"``, ``"unet.lora_alpha"``,
``"unet.alpha_pattern"``...). Without that metadata diffusers takes ``alpha = r`` per module
(scale 1), and so does the reader here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lorakit.config import LoraConfig
from lorakit.diffusion.loraset import LoraSet, ModuleLora, config_for, split_key
from lorakit.formats import peft
from lorakit.formats.files import read_header, read_tensors, write_tensors

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"
_SUFFIXES = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")  # PEFT's, under <component>.


def weights_file(path: str | Path) -> Path:
    """A ``.safetensors`` path as given; a directory -> its ``pytorch_lora_weights.safetensors``."""
    path = Path(path)
    return path if path.suffix == ".safetensors" else path / WEIGHT_NAME


def is_diffusers_keys(keys) -> bool:
    return any(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)


def _metadata(path: Path) -> dict:
    raw = read_header(path)[1].get(METADATA_KEY)
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: metadata {METADATA_KEY} is not JSON ({err})") from None


def read_diffusers(path: str | Path) -> LoraSet:
    """The LoraSet in a diffusers LoRA file (keys must carry their component prefix)."""
    path = weights_file(path)
    tensors = read_tensors(path)
    meta = _metadata(path)
    for key in tensors:
        parsed = peft.parse_key(key, prefix="")
        if parsed.suffix not in _SUFFIXES or "." not in parsed.module:
            raise ValueError(f"{path}: tensor {key} is not a diffusers LoRA key "
                             "(<component>.<module>.lora_A.weight / lora_B.weight / lora_magnitude_vector)")
    configs: dict[str, LoraConfig | None] = {}
    out: LoraSet = {}
    for key, f in peft.group_factors(tensors, path, prefix="").items():
        component, module = split_key(key)
        if component not in configs:
            configs[component] = _component_config(meta, component, path)
        cfg = configs[component]
        r = int(f.a.shape[0])
        alpha = cfg.alpha_for(module) if cfg is not None else float(r)
        if cfg is not None and cfg.use_rslora:  # files hold alpha/r scaling; keep the same dW
            alpha = cfg.scaling_for(module) * r
        out[key] = ModuleLora(down=f.a, up=f.b, alpha=alpha, magnitude=f.magnitude)
    return out


def _component_config(meta: dict, component: str, path: Path) -> LoraConfig | None:
    fields = {k[len(component) + 1:]: v for k, v in meta.items() if k.startswith(component + ".")}
    if not fields:
        return None
    known = {"r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora"}
    kw = {k: v for k, v in fields.items() if k in known}
    try:
        return LoraConfig(**kw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: metadata of {component!r} is not a LoRA config ({err})") from None


def write_diffusers(path: str | Path, lora_set: LoraSet) -> Path:
    """Write ``lora_set`` as a diffusers LoRA file (with the config metadata diffusers reads,
    so per-module alphas survive); returns the file's path. Atomic (temp file, then rename)."""
    path = weights_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    by_component: dict[str, dict[str, ModuleLora]] = {}
    for key, f in lora_set.items():
        tensors.update(peft.pair_tensors(key, f.down, f.up, f.magnitude))
        component, module = split_key(key)
        by_component.setdefault(component, {})[module] = f
    meta = {}
    for component, modules in by_component.items():
        # Keys keep CLIP's classic ``text_model.`` level; the config names modules without it:
        # diffusers strips it from the keys of a transformers-v5 (flattened) CLIP but uses the
        # metadata as is, and PEFT's suffix match finds the short names in a v4 CLIP too.
        cfg = config_for({m.removeprefix("text_model."): f for m, f in modules.items()})
        fields = {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": cfg.target_modules,
                  "rank_pattern": cfg.rank_pattern, "alpha_pattern": cfg.alpha_pattern,
                  "use_dora": cfg.use_dora, "init_lora_weights": True}
        meta.update({f"{component}.{k}": v for k, v in fields.items()})
    return write_tensors(path, tensors, {"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)})


__all__ = ["METADATA_KEY", "WEIGHT_NAME", "is_diffusers_keys", "read_diffusers", "weights_file",
           "write_diffusers"]
