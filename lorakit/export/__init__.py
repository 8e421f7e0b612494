"""`lorakit export`: a trained adapter as files that llama.cpp, Ollama, vLLM and TGI run.

``source`` loads the base and the adapter; ``lora`` turns the adapter into llama.cpp LoRA
tensors (scaling folded into B); ``merged`` a merged model into full GGUF tensors; ``run`` does
each export and its report; ``check`` measures agreement with llama.cpp / transformers. The
file formats themselves live in ``lorakit.formats.gguf`` and ``lorakit.formats.modelfile``.
"""

from lorakit.export.run import FORMATS, export
from lorakit.export.source import load_source

__all__ = ["FORMATS", "export", "load_source"]
