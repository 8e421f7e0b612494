"""GGUF (llama.cpp) files: LoRA adapters and full models, written through the ``gguf`` package.

Facts this module encodes (those of llama.cpp's ``convert_hf_to_gguf.py`` /
``convert_lora_to_gguf.py`` and of ``llama-adapter.cpp``, which loads adapters):

- Names: Hugging Face module paths map to llama.cpp names through ``gguf.TensorNameMap``
  (``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q``); a weight is ``NAME.weight``, a
  LoRA pair ``NAME.weight.lora_a`` / ``NAME.weight.lora_b``.
- Layout: numpy shapes are PyTorch's (``ne`` reversed in the file): a weight ``[out, in]``,
  ``lora_a`` = PEFT's ``lora_A.weight`` ``[r, in]``, ``lora_b`` = ``lora_B.weight`` ``[out, r]``.
- Llama's q/k rows are permuted between the Hugging Face layout (rotate-half RoPE) and
  llama.cpp's (interleaved pairs): :func:`permute_qk`. On a LoRA pair only B's rows move.
- Adapter scaling: llama.cpp multiplies every pair by ``scale * alpha / rank`` with ``alpha`` =
  ``adapter.lora.alpha`` (one value per file) and ``rank`` = B's column count (``alpha == 0``
  means no scaling). Per-layer scalings are therefore folded into B (``lorakit.export.lora``).

Every file is written to a temporary name beside the target and renamed into place, so a failed
write leaves nothing behind.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lorakit.formats.files import atomic_file

__all__ = [
    "ARCHITECTURES", "OUTTYPES", "GGUFTensor", "gguf_name", "permute_qk", "encode",
    "llama_metadata", "tokenizer_fields", "write_gguf", "read_gguf_tensor",
]

# Hugging Face architecture class -> llama.cpp architecture. Only Llama's graph is mapped and
# tested here; another architecture is refused by name rather than written half-right.
ARCHITECTURES = {"LlamaForCausalLM": "llama"}

# outtype -> (ggml type of 2-D weights, ggml type of embedding / output matrices)
OUTTYPES = {
    "f32": ("F32", "F32"),
    "f16": ("F16", "F16"),
    "bf16": ("BF16", "BF16"),
    "q8_0": ("Q8_0", "Q8_0"),
    # llama-quantize keeps the (here tied) embedding / output matrix at higher precision.
    "q4_0": ("Q4_0", "Q8_0"),
}
# ggml types encode() writes (the gguf package's quantizer covers these)
_WRITABLE = {"F32", "F16", "BF16", "Q8_0", "Q4_0"}
# general.file_type values (llama.cpp's LLAMA_FTYPE_*)
_FILE_TYPE = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32}


@dataclass
class GGUFTensor:
    """One tensor to write: llama.cpp name, fp32 data in PyTorch layout, ggml type name."""

    name: str
    data: np.ndarray
    ggml_type: str


def _arch_enum(arch: str):
    import gguf

    for key, value in gguf.MODEL_ARCH_NAMES.items():
        if value == arch:
            return key
    raise ValueError(f"gguf package does not know the architecture {arch!r}")


def gguf_name(hf_name: str, arch: str, n_layers: int) -> str:
    """llama.cpp name of a Hugging Face module path (no ``.weight``): ``blk.3.attn_q``.

    Raises ``ValueError`` naming the module when the architecture's map has no entry for it.
    """
    import gguf

    name_map = gguf.get_tensor_name_map(_arch_enum(arch), n_layers)
    mapped = name_map.get_name(hf_name)
    if mapped is None:
        raise ValueError(f"module {hf_name!r} has no llama.cpp tensor in the {arch!r} mapping")
    return mapped


def permute_qk(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder the output rows of a Llama q/k projection (``[n_head * head_dim, ...]``) from the
    Hugging Face rotate-half layout to llama.cpp's interleaved layout (``convert_hf_to_gguf``'s
    ``permute``): within each head, row ``i`` of the first half and row ``i`` of the second half
    become rows ``2i`` and ``2i + 1``. ``n_head`` is the number of heads the rows hold
    (``num_key_value_heads`` for k)."""
    out = rows.shape[0]
    return (rows.reshape(n_head, 2, out // n_head // 2, *rows.shape[1:])
            .swapaxes(1, 2).reshape(rows.shape))


def encode(data: np.ndarray, ggml_type: str) -> tuple[np.ndarray, str, str | None]:
    """Encode fp32 ``data`` as ``ggml_type``; returns ``(array, type written, note)``.

    A block-quantized type needs rows (the last dimension) in multiples of its block size;
    a tensor that does not fit falls back to F16 as llama.cpp's converters do, and ``note``
    says so. An unknown type raises ``ValueError`` naming it and the known ones.
    """
    import gguf

    data = np.ascontiguousarray(data, dtype=np.float32)
    if ggml_type == "F32":
        return data, "F32", None
    if ggml_type == "F16":
        return data.astype(np.float16), "F16", None
    if ggml_type not in _WRITABLE:
        raise ValueError(f"the GGUF writer has no ggml type {ggml_type!r}; it writes {sorted(_WRITABLE)}")
    qtype = gguf.GGMLQuantizationType[ggml_type]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.ndim < 2 or data.shape[-1] % block:
        return data.astype(np.float16), "F16", f"rows of {data.shape[-1]} not a multiple of {block}"
    return gguf.quants.quantize(data, qtype), ggml_type, None


def llama_metadata(config, outtype: str) -> dict[str, tuple[str, object]]:
    """``llama.*`` and ``general.*`` keys of a Llama model from its Hugging Face config, as
    ``{key: (value type, value)}``. Refuses config features whose GGUF form is not written here
    (RoPE scaling, attention / MLP biases) by name."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"config rope_type={rope['rope_type']!r} (RoPE scaling) is not supported "
                         "by the GGUF writer")
    for field in ("attention_bias", "mlp_bias"):
        if getattr(config, field, False):
            raise ValueError(f"config field {field}=True is not supported by the GGUF writer")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return {
        "llama.context_length": ("UINT32", config.max_position_embeddings),
        "llama.embedding_length": ("UINT32", config.hidden_size),
        "llama.block_count": ("UINT32", config.num_hidden_layers),
        "llama.feed_forward_length": ("UINT32", config.intermediate_size),
        "llama.attention.head_count": ("UINT32", config.num_attention_heads),
        "llama.attention.head_count_kv": ("UINT32", config.num_key_value_heads),
        "llama.rope.freq_base": ("FLOAT32", float(theta)),
        "llama.attention.layer_norm_rms_epsilon": ("FLOAT32", float(config.rms_norm_eps)),
        "llama.rope.dimension_count": ("UINT32", head_dim),
        "llama.vocab_size": ("UINT32", config.vocab_size),
        "general.file_type": ("UINT32", _FILE_TYPE[outtype]),
    }


def tokenizer_fields(path: str | Path) -> dict[str, tuple[str, object, str | None]]:
    """Every ``tokenizer.*`` key of an existing GGUF file (tokens, merges, token types, special
    ids, chat template), as ``{key: (value type, value, array item type)}``.

    Parsed once per file version (the reader walks ~150k strings in Python: seconds)."""
    path = Path(path)
    stat = path.stat()
    return dict(_tokenizer_fields(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=4)
def _tokenizer_fields(path: str, mtime_ns: int, size: int) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    out = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        types = [gguf.GGUFValueType(t).name for t in field.types]
        out[key] = (types[0], field.contents(), types[1] if len(types) > 1 else None)
    if "tokenizer.ggml.tokens" not in out:
        raise ValueError(f"{path}: GGUF file has no tokenizer (tokenizer.ggml.tokens missing)")
    return out


def _add_field(writer, key: str, vtype: str, value, sub_type: str | None = None) -> None:
    import gguf

    writer.add_key_value(key, value, gguf.GGUFValueType[vtype],
                         gguf.GGUFValueType[sub_type] if sub_type else None)


def write_gguf(path: str | Path, arch: str, fields: dict, tensors: list[GGUFTensor],
               overwrite: bool = False) -> tuple[dict[str, int], dict[str, str]]:
    """Write a GGUF file atomically. ``fields``: ``{key: (type, value[, item type])}`` beyond
    ``general.architecture``. Returns ``({ggml type written: tensor count}, {tensor: why it
    fell back to F16})``.

    An existing ``path`` is an error unless ``overwrite``; any failure removes the temporary
    file, so nothing partial is left at or beside ``path``.
    """
    import gguf

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"output file exists: {path} (pass --overwrite to replace it)")
    counts: dict[str, int] = {}
    fallbacks: dict[str, str] = {}
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        for key, spec in fields.items():
            _add_field(writer, key, *spec)
        for t in tensors:
            data, written, note = encode(t.data, t.ggml_type)
            if note:
                fallbacks[t.name] = f"{t.ggml_type} -> F16: {note}"
            raw = None if written in ("F32", "F16") else gguf.GGMLQuantizationType[written]
            writer.add_tensor(t.name, data, raw_dtype=raw)
            counts[written] = counts.get(written, 0) + 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return counts, fallbacks


def read_gguf_tensor(path: str | Path, names: list[str]) -> dict[str, np.ndarray]:
    """Tensors of a GGUF file decoded to fp32, in PyTorch layout (``[out, in]``), by name."""
    import gguf

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.name in names:
            shape = tuple(int(n) for n in reversed(t.shape))
            out[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    missing = sorted(set(names) - set(out))
    if missing:
        raise KeyError(f"{path}: no tensor {missing[0]!r}")
    return out
