"""``lorakit merge``: an adapter merged into its base model, saved as a plain Hugging Face model
directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from lorakit.models import DEFAULT_MODEL


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge an adapter into its base model and save the result",
                       description="Load MODEL, apply the PEFT adapter ADAPTER, merge it into the "
                                   "weights and save a plain Hugging Face model directory to OUT.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="base model: embedded name, local directory or Hub id (default: %(default)s)")
    p.add_argument("--adapter", required=True, help="PEFT adapter directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype the merged model is computed and saved in")
    p.set_defaults(func=_merge)


def _merge(args) -> int:
    import torch

    import lorakit
    from lorakit.config import load_config
    from lorakit.models import load_model, load_tokenizer
    from lorakit.paths import check_output_dir

    check_output_dir(args.out, "--out")  # before anything is loaded
    load_config(args.adapter)
    model = load_model(args.model, dtype=getattr(torch, args.dtype))
    lorakit.load_adapter(model, args.adapter)
    lorakit.merge_and_unload(model, safe=True)
    out = Path(args.out)
    model.save_pretrained(out)
    load_tokenizer(args.model).save_pretrained(out)
    print(f"merged {args.adapter} into {args.model} -> {out}")
    return 0
