"""The four exports (llama.cpp LoRA, merged GGUF, Ollama, merged Hugging Face directory) and the
report each one writes.

Every export checks its output path first (an existing path is an error unless ``overwrite``),
writes under a temporary name and renames, and returns a report: what was written (files,
sizes, tensor types), what was folded, and the measured agreement with lorakit's own forward
where a consumer is available (``check``: llama.cpp for GGUF files, transformers for the
Hugging Face directory).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from lorakit.export import check as checks
from lorakit.export.lora import lora_tensors
from lorakit.export.merged import model_fields, model_tensors
from lorakit.export.source import Source
from lorakit.formats.files import atomic_dir
from lorakit.formats.gguf import OUTTYPES, tokenizer_fields, write_gguf
from lorakit.formats.modelfile import derive_chat_format, go_template, modelfile

__all__ = ["FORMATS", "LORA_OUTTYPES", "export", "report_path"]

FORMATS = ("gguf-lora", "gguf", "ollama", "hf")
LORA_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
HF_DTYPES = ("float32", "float16", "bfloat16")


def report_path(fmt: str, out: Path) -> Path:
    return out / "export_report.json" if fmt in ("ollama", "hf") else out.with_name(out.name + ".report.json")


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(f"output path exists: {out} (pass --overwrite to replace it)")
    if not out.parent.exists():
        raise FileNotFoundError(f"output directory does not exist: {out.parent}")


def _tokenizer(src: Source):
    from lorakit.models import load_tokenizer

    return load_tokenizer(src.base)


def _eos_ids(tok, model=None) -> set[int]:
    from lorakit.eval.generate import stop_token_ids

    return set(stop_token_ids(tok, model))


def _llama_agreement(src: Source, tok, model_file: Path, lora: list[dict] | None,
                     n_prompts: int, n_tokens: int) -> dict:
    missing = checks.consumer_missing()
    if missing:
        return {"consumer": "llama.cpp", "skipped": missing}
    prompts = checks.chat_prompts(tok, checks.PROMPTS[:n_prompts])
    ours = checks.lorakit_greedy(src.model, prompts, n_tokens, _eos_ids(tok, src.model))
    try:
        theirs, _ = checks.llama_greedy(model_file, prompts, n_tokens, lora)
    except RuntimeError as err:   # the file is written; the report says llama.cpp refused it
        return {"consumer": "llama.cpp", "failed": str(err)}
    return {"consumer": "llama.cpp (node-llama-cpp)", "max_tokens": n_tokens,
            **checks.agreement(ours, theirs).to_dict()}


def _merge(src: Source) -> None:
    import lorakit
    from lorakit.quant.quantize import merge_and_unload_quantized

    if src.base_quant == "nf4":
        merge_and_unload_quantized(src.model, safe=True)
    else:
        lorakit.merge_and_unload(src.model, safe=True)


def _tokenizer_fields(src: Source) -> dict:
    if src.base_gguf is None:
        raise ValueError(f"base {src.base!r} has no GGUF file to take the tokenizer and chat "
                         "template from; pass --base-gguf FILE (a GGUF of the same base)")
    return tokenizer_fields(src.base_gguf)


def _write_lora(src: Source, out: Path, outtype: str, overwrite: bool) -> dict:
    if outtype not in LORA_OUTTYPES:
        raise ValueError(f"unknown --outtype {outtype!r} for gguf-lora; known: {list(LORA_OUTTYPES)}")
    exp = lora_tensors(src.model, src.arch, OUTTYPES[outtype][0], src.name)
    fields = {"general.type": ("STRING", "adapter"), "adapter.type": ("STRING", "lora"),
              "adapter.lora.alpha": ("FLOAT32", exp.alpha)}
    types, fallbacks = write_gguf(out, src.arch, fields, exp.tensors, overwrite=overwrite)
    return {"file": str(out), "bytes": out.stat().st_size, "tensor_types": types,
            "fallbacks": _summarize(fallbacks),
            "pairs": len(exp.tensors) // 2, "alpha": exp.alpha,
            "folded_into_B": exp.folded or "none (plain alpha/r scaling on every layer)"}


def _write_model(src: Source, out: Path, outtype: str, overwrite: bool) -> dict:
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown --outtype {outtype!r} for gguf; known: {sorted(OUTTYPES)}")
    fields = model_fields(src.model, outtype, f"{src.base} + lorakit adapter", _tokenizer_fields(src))
    types, fallbacks = write_gguf(out, src.arch, fields, model_tensors(src.model, src.arch, outtype),
                                  overwrite=overwrite)
    return {"file": str(out), "bytes": out.stat().st_size, "tensor_types": types,
            "fallbacks": _summarize(fallbacks)}


def _summarize(fallbacks: dict[str, str]) -> dict:
    """Tensors written as F16 instead of the block type asked for, grouped by reason."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in fallbacks.items():
        by_reason.setdefault(reason, []).append(name)
    return {reason: {"count": len(names), "e.g.": names[:3]} for reason, names in by_reason.items()}


def _gguf_lora(src, out, opts) -> dict:
    tok = _tokenizer(src)
    part = _write_lora(src, out, opts.get("outtype") or "f32", opts.get("overwrite", False))
    if opts.get("check_prompts") and src.base_gguf is None:
        part["agreement"] = {"consumer": "llama.cpp", "skipped": "no GGUF of the base (--base-gguf)"}
    elif opts.get("check_prompts"):
        lora = [{"filePath": str(out), "scale": 1.0}]
        part["agreement"] = _llama_agreement(src, tok, src.base_gguf, lora,
                                             opts["check_prompts"], opts["check_tokens"])
        part["agreement"]["base_file"] = str(src.base_gguf)
    return part


def _gguf(src, out, opts) -> dict:
    tok = _tokenizer(src)
    _merge(src)
    part = _write_model(src, out, opts.get("outtype") or "f16", opts.get("overwrite", False))
    if opts.get("check_prompts"):
        part["agreement"] = _llama_agreement(src, tok, out, None, opts["check_prompts"],
                                             opts["check_tokens"])
    return part


def _stops(tok, fmt) -> list[str]:
    stops = [tok.eos_token]
    for special in tok.all_special_tokens:
        if fmt.pre["user"].startswith(special) and special not in stops:
            stops.append(special)
    return stops


def _ollama(src, out, opts) -> dict:
    tok = _tokenizer(src)
    render = lambda messages, gen: tok.apply_chat_template(messages, tokenize=False,
                                                           add_generation_prompt=gen)
    fmt = derive_chat_format(render)   # refuses before anything is written
    with atomic_dir(out) as tmp:
        if opts.get("unmerged"):
            if src.base_gguf is None:
                raise ValueError("--unmerged needs the base as GGUF: pass --base-gguf FILE")
            shutil.copyfile(src.base_gguf, tmp / "base.gguf")
            part = _gguf_lora(src, tmp / "adapter.gguf", {**opts, "check_prompts": 0})
            files = ("base.gguf", "adapter.gguf")
        else:
            part = _gguf(src, tmp / "model.gguf", {**opts, "check_prompts": 0})
            files = ("model.gguf", None)
        text = modelfile(files[0], go_template(fmt), _stops(tok, fmt), adapter_file=files[1])
        (tmp / "Modelfile").write_text(text)
    part = {"dir": str(out), "modelfile": text, "files": {f: (out / f).stat().st_size
                                                          for f in files if f} | {"Modelfile": len(text)},
            "gguf": {k: v for k, v in part.items() if k != "file"}, "stops": _stops(tok, fmt)}
    if opts.get("check_prompts"):
        lora = [{"filePath": str(out / "adapter.gguf"), "scale": 1.0}] if files[1] else None
        part["agreement"] = _llama_agreement(src, tok, out / files[0], lora,
                                             opts["check_prompts"], opts["check_tokens"])
    return part


def _base_dtype(base: str) -> str:
    from transformers import AutoConfig

    from lorakit.models import resolve_model_path

    dtype = getattr(AutoConfig.from_pretrained(resolve_model_path(base)), "dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else "float32"


def _hf(src, out, opts) -> dict:
    dtype = opts.get("dtype") or _base_dtype(src.base)
    if dtype not in HF_DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r} for hf; known: {list(HF_DTYPES)}")
    tok = _tokenizer(src)
    _merge(src)
    with atomic_dir(out) as tmp:
        merged = src.model   # stays fp32: the agreement check measures the dtype's rounding
        merged.generation_config.eos_token_id = sorted(_eos_ids(tok, merged))
        state = {k: v.to(getattr(torch, dtype)) for k, v in merged.state_dict().items()}
        merged.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        config = json.loads((tmp / "config.json").read_text())   # save_pretrained records the
        config["dtype"] = dtype                                   # in-memory (fp32) dtype
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tok.save_pretrained(tmp)
    part = {"dir": str(out), "dtype": dtype,
            "files": {p.name: p.stat().st_size for p in sorted(out.iterdir())}}
    if opts.get("check_prompts"):
        part["agreement"] = _hf_agreement(merged, out, tok, opts["check_prompts"])
    return part


@torch.no_grad()
def _hf_agreement(model, out: Path, tok, n_prompts: int) -> dict:
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    worst = 0.0
    for prompt in checks.chat_prompts(tok, checks.PROMPTS[:n_prompts]):
        ids = torch.tensor([prompt])
        worst = max(worst, (model(ids).logits.float() - reloaded(ids).logits.float()).abs().max().item())
    return {"consumer": "transformers AutoModelForCausalLM", "prompts": n_prompts,
            "max_abs_logit_diff_vs_fp32_merge": worst}


_WRITERS = {"gguf-lora": _gguf_lora, "gguf": _gguf, "ollama": _ollama, "hf": _hf}


def export(src: Source, fmt: str, out: str | Path, **opts) -> dict:
    """Export ``src`` as ``fmt`` to ``out`` and write the report beside it; returns the report.

    ``opts``: ``outtype`` (GGUF), ``dtype`` (hf), ``unmerged`` (ollama: base + adapter files),
    ``overwrite``, ``check_prompts`` / ``check_tokens`` (0 prompts: no agreement check).
    """
    if fmt not in _WRITERS:
        raise ValueError(f"unknown export format {fmt!r}; known: {list(FORMATS)}")
    out = Path(out)
    _check_out(out, opts.get("overwrite", False))
    _check_out(report_path(fmt, out) if fmt in ("gguf-lora", "gguf") else out, opts.get("overwrite", False))
    opts.setdefault("check_tokens", 16)
    start = time.perf_counter()
    part = _WRITERS[fmt](src, out, opts)
    report = {"format": fmt, "base": src.base, "base_quant": src.base_quant,
              "seconds": round(time.perf_counter() - start, 2), **part}
    report_path(fmt, out).write_text(json.dumps(report, indent=2) + "\n")
    return report
