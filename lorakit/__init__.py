"""lorakit: LoRA adapters for any PyTorch model, in PEFT's file format.

    import lorakit
    cfg = lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    lorakit.add_adapter(model, cfg)            # in place
    ...train...
    lorakit.save_adapter(model, "out/")        # adapter_config.json + adapter_model.safetensors
"""

from lorakit.adapters import (
    adapter_per_row,
    disabled,
    merge,
    merge_and_unload,
    print_trainable_parameters,
    set_adapter,
    trainable_parameters,
    unmerge,
)
from lorakit.combine import CombineReport, combine
from lorakit.config import LoraConfig
from lorakit.errors import NotFoundError
from lorakit.inject import (
    active_adapters,
    adapter_configs,
    add_adapter,
    delete_adapter,
    unload,
)
from lorakit.io import adapter_state_dict, hotswap, load_adapter, save_adapter
from lorakit.variants.adalora import AdaLoraConfig
from lorakit.variants.adalora_alloc import AdaLoraController
from lorakit.variants.vera import VeraConfig
from lorakit.init_methods import save_converted_adapter
from lorakit.loraplus import loraplus_optimizer

__version__ = "0.1.0"

__all__ = [
    "AdaLoraConfig",
    "AdaLoraController",
    "CombineReport",
    "LoraConfig",
    "NotFoundError",
    "VeraConfig",
    "active_adapters",
    "adapter_configs",
    "adapter_per_row",
    "adapter_state_dict",
    "add_adapter",
    "combine",
    "delete_adapter",
    "disabled",
    "hotswap",
    "load_adapter",
    "loraplus_optimizer",
    "merge",
    "merge_and_unload",
    "print_trainable_parameters",
    "save_adapter",
    "save_converted_adapter",
    "set_adapter",
    "trainable_parameters",
    "unload",
    "unmerge",
]
