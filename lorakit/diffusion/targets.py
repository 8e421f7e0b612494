"""Target-module presets for diffusers models (U-Nets and DiT-style transformers).

Pass one as ``LoraConfig(target_modules=TARGETS["attention"])``: entries are PEFT suffixes,
so they match every block's layer of that name. The names are diffusers' ``Attention``
(``to_q``, ``to_k``, ``to_v``, ``to_out.0``), shared by ``UNet2DConditionModel``,
``Transformer2DModel``, ``DiTTransformer2DModel``, ``SD3Transformer2DModel`` and friends.
"""

from __future__ import annotations

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]

TARGETS: dict[str, list[str]] = {
    # what diffusers' DreamBooth-LoRA script trains on the U-Net
    "attention": ATTENTION,
    # plus the 1x1 convs / linears around each transformer block
    "attention+proj": ATTENTION + ["proj_in", "proj_out"],
    # plus the resnet convs and time projections (kohya's "LoCon" coverage)
    "attention+conv": ATTENTION + ["proj_in", "proj_out", "conv1", "conv2", "conv_shortcut",
                                   "time_emb_proj"],
    # a DiT block's attention and feed-forward
    "transformer": ATTENTION + ["ff.net.0.proj", "ff.net.2"],
}

__all__ = ["ATTENTION", "TARGETS"]
