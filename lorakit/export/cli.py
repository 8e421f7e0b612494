"""`lorakit export ADAPTER --to gguf-lora|gguf|ollama|hf --out PATH`."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export an adapter for llama.cpp / Ollama, or merged (GGUF, Hugging Face)",
        description="Export the PEFT adapter ADAPTER: gguf-lora (llama.cpp LoRA file, every "
                    "layer's scaling folded in), gguf (merged full model with tokenizer and chat "
                    "template), ollama (GGUF + Modelfile), hf (merged safetensors directory). "
                    "Writes a report (JSON) beside the output with the measured agreement "
                    "with lorakit's own forward.")
    p.add_argument("adapter", help="PEFT adapter directory")
    p.add_argument("--to", required=True, choices=["gguf-lora", "gguf", "ollama", "hf"], dest="fmt",
                   help="what to write: a llama.cpp LoRA file, a merged GGUF, GGUF + Modelfile, a merged HF directory")
    p.add_argument("--out", required=True, help="output file (gguf-lora, gguf) or directory (ollama, hf)")
    p.add_argument("--outtype", default=None,
                   help="GGUF tensor type: f32|f16|bf16|q8_0 (gguf-lora, default f32), "
                        "also q4_0 (gguf / ollama, default f16)")
    p.add_argument("--dtype", default=None, help="hf: float32|float16|bfloat16 (default: the base's)")
    p.add_argument("--model", default=None, help="base model (default: the adapter's base_model_name_or_path)")
    p.add_argument("--base-gguf", default=None,
                   help="a GGUF file of the base (tokenizer, llama.cpp base); the embedded model has one")
    p.add_argument("--base-quant", default="none", choices=["none", "nf4"],
                   help="nf4: a QLoRA adapter, merged onto the NF4-decoded base it was trained on "
                        "(default: %(default)s)")
    p.add_argument("--unmerged", action="store_true", help="ollama: base GGUF + ADAPTER file instead of a merged GGUF")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--check-prompts", type=int, default=4,
                   help="prompts for the agreement check, 0 skips it (default: %(default)s)")
    p.add_argument("--check-tokens", type=int, default=16, help="greedy tokens per check prompt (default: %(default)s)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    try:
        return _export(args)
    except FileExistsError as err:  # the dispatcher prints ValueErrors as one line
        raise ValueError(str(err)) from None


def _export(args) -> int:
    from lorakit.export import export, load_source

    src = load_source(args.adapter, args.model, base_quant=args.base_quant,
                      base_gguf=args.base_gguf, untie_for_merge=args.fmt != "gguf-lora")
    report = export(src, args.fmt, args.out, outtype=args.outtype, dtype=args.dtype,
                    unmerged=args.unmerged, overwrite=args.overwrite,
                    check_prompts=args.check_prompts, check_tokens=args.check_tokens)
    report.pop("modelfile", None)
    print(json.dumps(report, indent=2))
    return 0
