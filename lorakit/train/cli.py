"""``lorakit train``: a YAML config, flags, or both (flags win); ``--resume RUN_DIR`` continues."""

from __future__ import annotations

import argparse
import sys

from lorakit.train import config_io, data_cli
from lorakit.train.config import TrainConfig

_EPILOG = """examples:
  lorakit train examples/sql_demo.yaml
  lorakit train --data train.jsonl --r 16 --lora-alpha 32 --epochs 2 --output-dir runs/a
  lorakit train --resume runs/a
  lorakit train examples/sql_demo.yaml --dry-run      # check config + data, no weights loaded
  torchrun --nproc_per_node=2 -m lorakit.cli train examples/sql_demo.yaml
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train", help="fine-tune a model with LoRA (or fully) on a data file",
        description="Fine-tune with LoRA/QLoRA/DoRA or fully. Settings come from one typed "
                    "config: a YAML file, flags, or both (flags override the file).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config file (keys = the flags below)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its newest checkpoint, with the "
                             "config saved there; flags may change only progress, log_every, "
                             "eval_every, save_every, keep_last, early_stopping_patience and "
                             "max_steps (upwards)")
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve the config, tokenize all data and show the first examples "
                             "as the model sees them (see `lorakit data preview`); loads only "
                             "the tokenizer, writes nothing")
    data_cli.add_preview_arguments(parser)
    config_io.add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The resolved config: the run's saved config (resume), else file < flags."""
    flags = config_io.flag_values(args)
    if args.resume:
        if args.config:
            raise ValueError("--resume takes its settings from RUN_DIR/config.yaml; pass no "
                             "config file with it")
        from lorakit.train.resume import resume_config

        return resume_config(args.resume, flags)
    values = config_io.load_yaml(args.config) if args.config else {}
    source = f"{args.config} + flags" if args.config and flags else (args.config or "flags")
    return config_io.from_dict(config_io.merge(values, flags), source)


def _command(args: argparse.Namespace) -> list[str]:
    """The command line of this run, rebuilt from the parsed arguments (for the model card)."""
    head = ["lorakit", "train"] + ([args.config] if args.config else [])
    if args.resume:
        head += ["--resume", args.resume]
    return head + config_io.as_flags(config_io.flag_values(args))


def run(args: argparse.Namespace) -> int:
    from lorakit.train.loop import TrainingDiverged, train

    cfg = config_from_args(args)
    if args.dry_run:
        return data_cli.show(cfg, args, header="--- resolved config ---\n" + config_io.to_yaml(cfg))
    try:
        train(cfg, resume=bool(args.resume), command=_command(args))
    except TrainingDiverged as err:
        print(f"lorakit train: error: {err}", file=sys.stderr)
        return 1
    return 0
