"""kohya-ss / A1111 / Civitai LoRA files (sd-scripts ``networks/lora.py``), both directions.

One safetensors file; per adapted module, named by its prefix and its module path with every
``.`` turned into ``_``:

    lora_unet_<path>.lora_down.weight   A [r, in]  (conv: [r, in, kh, kw])
    lora_unet_<path>.lora_up.weight     B [out, r] (conv: [out, r, 1, 1])
    lora_unet_<path>.alpha              scalar; dW = alpha / r * B @ A (no alpha: alpha = r)
    lora_unet_<path>.dora_scale         DoRA magnitude, written [out, 1] (LyCORIS, wd_on_out)
    lora_te_<path>...                   the text encoder (SD 1.x/2.x); lora_te1_ / lora_te2_ for
                                        SDXL's two encoders

e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` ->
``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``. The ``_`` spelling
loses where the dots were, so reading needs the model's module names (as sd-scripts builds its
names from the model): every name of the component is spelled the same way and looked up. This
reads files of models with diffusers module names (SD 1.x/2.x as kohya trains them); SDXL files
from kohya use the original SGM U-Net's names (``input_blocks_4_1_...``), which are not remapped.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from lorakit.diffusion.loraset import LoraSet, ModuleLora, file_path, split_key
from lorakit.formats.files import read_tensors, write_tensors

# component -> kohya prefix (written); reading also accepts lora_te1 for the first encoder.
PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
_READ_PREFIXES = sorted({**{v: k for k, v in PREFIXES.items()}, "lora_te1": "text_encoder"}.items(),
                        key=lambda kv: -len(kv[0]))
_SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha", "dora_scale": "magnitude"}


def kohya_name(component: str, module: str) -> str:
    """``("unet", "a.b.c")`` -> ``"lora_unet_a_b_c"``."""
    if component not in PREFIXES:
        raise ValueError(f"component {component!r} has no kohya prefix; known: {list(PREFIXES)}")
    return f"{PREFIXES[component]}_{module.replace('.', '_')}"


def is_kohya_keys(keys) -> bool:
    return any(k.startswith("lora_") and k.endswith((".lora_down.weight", ".lora_up.weight")) for k in keys)


def write_kohya(path: str | Path, lora_set: LoraSet) -> Path:
    """Write ``lora_set`` as a kohya LoRA file (atomic); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, f in lora_set.items():
        base = kohya_name(*split_key(key))
        if f"{base}.lora_down.weight" in tensors:
            raise ValueError(f"{key}: its kohya name {base} collides with another module's")
        tensors[f"{base}.lora_down.weight"] = f.down.contiguous()
        tensors[f"{base}.lora_up.weight"] = f.up.contiguous()
        tensors[f"{base}.alpha"] = torch.tensor(float(f.alpha), dtype=torch.float32)
        if f.magnitude is not None:
            tensors[f"{base}.dora_scale"] = f.magnitude.reshape(f.up.shape[0], -1).contiguous()
    ranks = sorted({f.rank for f in lora_set.values()})
    alphas = sorted({float(f.alpha) for f in lora_set.values()})
    meta = {"format": "pt", "ss_network_module": "networks.lora",
            "ss_network_dim": str(ranks[0]) if len(ranks) == 1 else "dynamic",
            "ss_network_alpha": str(alphas[0]) if len(alphas) == 1 else "dynamic"}
    return write_tensors(path, tensors, meta)


def _name_table(component: str, model: nn.Module) -> dict[str, str]:
    """kohya spelling -> module path (as files spell it) for every module of ``model``
    (adapted layers' own children excluded). Two paths with one spelling map to None."""
    table: dict[str, str | None] = {}
    for name, _ in model.named_modules():
        if not name or any(p in ("base_layer", "lora_A", "lora_B", "lora_dropout") for p in name.split(".")):
            continue
        name = file_path(model, name)
        k = kohya_name(component, name)
        table[k] = None if k in table and table[k] != name else name
    return table


def _split(key: str, path: Path) -> tuple[str, str, str]:
    """``lora_unet_x_y.lora_up.weight`` -> (component, kohya module name, field)."""
    base, _, suffix = key.partition(".")
    if suffix not in _SUFFIXES:
        raise ValueError(f"{path}: tensor {key} is not a kohya LoRA key (.lora_down.weight, "
                         ".lora_up.weight, .alpha, .dora_scale); LyCORIS LoHa/LoKr/Tucker files "
                         "are not supported")
    for prefix, component in _READ_PREFIXES:
        if base.startswith(prefix + "_"):
            return component, base, _SUFFIXES[suffix]
    raise ValueError(f"{path}: tensor {key} has no known kohya prefix "
                     f"({[p for p, _ in _READ_PREFIXES]})")


def read_kohya(path: str | Path, components: dict[str, nn.Module]) -> LoraSet:
    """The LoraSet in a kohya file, its names resolved against ``components``' modules.

    A key that names no module raises with that key (the first in file order) and the closest
    module names of the component, e.g. a file trained for another architecture.
    """
    path = Path(path)
    tensors = read_tensors(path)
    tables = {c: _name_table(c, m) for c, m in components.items()}
    parts: dict[tuple[str, str], dict] = {}
    first_key: dict[str, str] = {}
    for key, t in tensors.items():
        component, base, field = _split(key, path)
        first_key.setdefault(base, key)
        if component not in components:
            raise ValueError(f"{path}: {key} is for the {component} ({base.split('_')[1]} keys), "
                             f"which was not given; components: {list(components)}")
        parts.setdefault((component, base), {})[field] = t
    out: LoraSet = {}
    for (component, base), p in parts.items():
        module = tables[component].get(base, "")
        if not module:
            raise ValueError(_no_module_message(path, first_key[base], component, components[component],
                                                tables[component]))
        if "down" not in p or "up" not in p:
            raise ValueError(f"{path}: {base} needs both lora_down.weight and lora_up.weight")
        r = int(p["down"].shape[0])
        alpha = float(p["alpha"].item()) if "alpha" in p else float(r)
        mag = p.get("magnitude")
        out[f"{component}.{module}"] = ModuleLora(down=p["down"], up=p["up"], alpha=alpha,
                                                  magnitude=None if mag is None else mag.reshape(-1))
    return out


def _no_module_message(path: Path, key: str, component: str, model: nn.Module, table: dict) -> str:
    base = key.partition(".")[0]
    if base in table:
        return f"{path}: key {key} is ambiguous in this {type(model).__name__} (two module paths spell it)"
    close = difflib.get_close_matches(base, [k for k, v in table.items() if v], n=3, cutoff=0.3)
    names = [table[c] for c in close]
    return (f"{path}: key {key} matches no module of the {component} ({type(model).__name__}; "
            f"a file for another architecture?); closest module names: {names}")


__all__ = ["PREFIXES", "is_kohya_keys", "kohya_name", "read_kohya", "write_kohya"]
