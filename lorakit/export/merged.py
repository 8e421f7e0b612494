"""A merged (adapter folded in) Llama model as full GGUF tensors and metadata.

The model's own parameters are walked once (``named_parameters`` lists a tied ``lm_head`` once,
as the embedding, which is what llama.cpp expects: no ``output.weight`` means "tied"). An
untied ``lm_head`` is written as ``output.weight``. 1-D tensors (norms) stay F32 as in
llama.cpp's converter; the embedding / output matrix use the outtype's embedding type.
"""

from __future__ import annotations

from torch import nn

from lorakit.formats.gguf import OUTTYPES, GGUFTensor, gguf_name, llama_metadata, permute_qk

__all__ = ["model_tensors", "model_fields"]

_EMBEDDING_NAMES = ("token_embd", "output")


def model_tensors(model: nn.Module, arch: str, outtype: str) -> list[GGUFTensor]:
    """Every parameter of a (merged, plain) Llama ``model`` as a GGUF tensor of ``outtype``.

    Raises ``ValueError`` naming the first parameter the architecture's map has no name for
    (for example a leftover LoRA factor: merge first) or an unknown outtype.
    """
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown outtype {outtype!r}; known: {sorted(OUTTYPES)}")
    weight_type, embedding_type = OUTTYPES[outtype]
    hf = model.config
    heads = {"q_proj": hf.num_attention_heads, "k_proj": hf.num_key_value_heads}
    out = []
    for key, param in model.named_parameters():
        module_name, _, suffix = key.rpartition(".")
        if suffix != "weight":
            raise ValueError(f"parameter {key!r} has no llama.cpp tensor (only weights are mapped)")
        target = gguf_name(module_name, arch, hf.num_hidden_layers)
        data = param.detach().float()
        leaf = module_name.split(".")[-1]
        if leaf in heads:
            data = permute_qk(data, heads[leaf])
        if data.dim() == 1:
            ggml_type = "F32"
        elif target in _EMBEDDING_NAMES:
            ggml_type = embedding_type
        else:
            ggml_type = weight_type
        out.append(GGUFTensor(f"{target}.weight", data.numpy(), ggml_type))
    return out


def model_fields(model: nn.Module, outtype: str, name: str, tokenizer: dict) -> dict:
    """GGUF key/value fields of a full model: general.*, llama.*, and the ``tokenizer.*`` keys
    (from :func:`lorakit.formats.gguf.tokenizer_fields`), so the file carries its vocabulary,
    special ids and chat template."""
    fields = {"general.type": ("STRING", "model"), "general.name": ("STRING", name)}
    fields.update(llama_metadata(model.config, outtype))
    fields["general.quantization_version"] = ("UINT32", 2)
    fields.update(tokenizer)
    return fields
