"""LoRA for image generators (diffusers U-Nets and DiTs): target presets, the community's file
formats (diffusers, kohya / A1111 / Civitai), and noise-prediction training.

The adapters themselves are ordinary lorakit adapters (``lorakit.add_adapter`` on the U-Net's
``nn.Linear``/``nn.Conv2d`` layers); weighted mixing is ``lorakit.set_adapter(model, names,
weights=)`` and ``lorakit.merge(model, names, weights=)``. diffusers is needed only to build
the models and schedulers (``pip install lorakit[diffusion]``); this package imports it lazily.
"""

from lorakit.diffusion.files import (
    convert_lora_file,
    detect_format,
    load_lora_weights,
    save_lora_weights,
)
from lorakit.diffusion.targets import TARGETS

__all__ = ["TARGETS", "convert_lora_file", "detect_format", "load_lora_weights", "save_lora_weights"]
