"""QLoRA support: NF4 quantization byte-compatible with bitsandbytes, without importing it.

- ``nf4.py``: the pure codec (``nf4_quantize`` / ``nf4_dequantize``)
- ``state.py``: bitsandbytes' state-dict layout of a 4-bit weight
- ``linear4bit.py``: ``Linear4bit``, the frozen 4-bit base layer
- ``quantize.py``: model surgery (``quantize``, ``quantized_linear_stats``)
"""

from lorakit.quant.linear4bit import Linear4bit
from lorakit.quant.nf4 import QuantState, nf4_dequantize, nf4_quantize
from lorakit.quant.quantize import merge_and_unload_quantized, quantize, quantized_linear_stats

__all__ = [
    "Linear4bit",
    "QuantState",
    "merge_and_unload_quantized",
    "nf4_dequantize",
    "nf4_quantize",
    "quantize",
    "quantized_linear_stats",
]
