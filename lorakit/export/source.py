"""What an export starts from: the base model, the adapter on it, and the base's GGUF file.

The base is the adapter's ``base_model_name_or_path`` unless given. The embedded SmolLM2 is a
Q4_1 GGUF dequantized to fp32 (``lorakit.models``); adapters trained on it export onto those
same dequantized weights, and its GGUF file supplies the tokenizer and chat template of a
merged GGUF and is the base llama.cpp runs an exported LoRA file on. A QLoRA adapter is loaded
onto the base quantized the way it was trained (``base_quant="nf4"``) and merges onto the
decoded NF4 weights (``lorakit.quant.merge_and_unload_quantized``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lorakit.formats.gguf import ARCHITECTURES

__all__ = ["Source", "load_source", "resolve_base"]


@dataclass
class Source:
    """A base model with adapter ``name`` loaded (fp32), and where it came from."""

    model: nn.Module
    base: str                   # embedded name or model directory
    arch: str                   # llama.cpp architecture
    base_gguf: Path | None      # a GGUF file of the same base (tokenizer, llama.cpp base)
    base_quant: str             # "none" or "nf4"
    name: str = "default"


def resolve_base(adapter_dir: Path, base: str | None) -> str:
    """The base to export onto: ``base`` or the adapter's ``base_model_name_or_path``, with
    an embedded model's converted cache directory or Hub id mapped back to its name.

    ``lorakit train`` on the embedded SmolLM2 records its Hub id
    (``HuggingFaceTB/SmolLM2-135M-Instruct``, so other tools find a base), but the adapter was
    trained on the weights dequantized from the embedded Q4_1 GGUF: those, and that GGUF as
    llama.cpp's base, are what it exports onto (``--model`` names another base)."""
    from lorakit.config import load_config
    from lorakit.models import EMBEDDED, EMBEDDED_HUB_IDS, cache_dir

    if base is None:
        base = load_config(adapter_dir).base_model_name_or_path
        if not base:
            raise ValueError(f"{adapter_dir}: adapter_config.json names no base model; pass --model")
    for name in EMBEDDED:
        if Path(base) == cache_dir() / name or base == EMBEDDED_HUB_IDS.get(name):
            return name
    return base


def embedded_gguf(base: str) -> Path | None:
    """The GGUF file behind an embedded model name (None for other bases)."""
    from lorakit.models import EMBEDDED, _gguf_dir

    if base not in EMBEDDED:
        return None
    package, filename = EMBEDDED[base]
    return _gguf_dir(package) / filename


def _untie_head(model: nn.Module) -> None:
    """Give ``lm_head`` its own weight, so merging an adapter into it leaves the embedding."""
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False


def load_source(adapter_dir: str | Path | None, base: str | None = None,
                base_quant: str = "none", base_gguf: str | Path | None = None,
                untie_for_merge: bool = False) -> Source:
    """Load the base (fp32) and the adapter in ``adapter_dir`` (None: the base alone).

    Refuses an architecture without a llama.cpp mapping by name. ``untie_for_merge`` unties
    a tied ``lm_head`` when the adapter adapts it (a merged export then writes its own output
    matrix). ``base_gguf`` names a GGUF of the base for non-embedded bases.
    """
    import lorakit
    from lorakit.config import load_config
    from lorakit.models import load_model

    adapter_dir = Path(adapter_dir) if adapter_dir is not None else None
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").exists():
        raise FileNotFoundError(f"not an adapter directory (no adapter_config.json): {adapter_dir}")
    if base is None and adapter_dir is None:
        raise ValueError("pass --model for an export without an adapter")
    base = resolve_base(adapter_dir, base) if base is None else base
    model = load_model(base, dtype=torch.float32)
    arch_class = (model.config.architectures or [type(model).__name__])[0]
    if arch_class not in ARCHITECTURES:
        raise ValueError(f"architecture {arch_class} is not supported by the GGUF export; "
                         f"supported: {sorted(ARCHITECTURES)}")
    if base_quant == "nf4":
        from lorakit.quant import quantize

        quantize(model, "nf4")
    elif base_quant != "none":
        raise ValueError(f"unknown base_quant {base_quant!r}; known: ['none', 'nf4']")
    if adapter_dir is not None:
        config = load_config(adapter_dir)
        targets_head = "lm_head" in str(getattr(config, "target_modules", "")) or \
            any("lm_head" in k for k in (getattr(config, "rank_pattern", {}) or {}))
        if untie_for_merge and targets_head and model.config.tie_word_embeddings:
            _untie_head(model)
        lorakit.load_adapter(model, adapter_dir)
    gguf_path = Path(base_gguf) if base_gguf else embedded_gguf(base)
    return Source(model=model, base=base, arch=ARCHITECTURES[arch_class], base_gguf=gguf_path,
                  base_quant=base_quant)
