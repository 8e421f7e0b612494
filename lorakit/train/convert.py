"""``lorakit config convert``: an Axolotl or LLaMA-Factory training YAML -> a lorakit config.

Keys with a lorakit equivalent are renamed (``peer_config.ALIASES``); the data set is taken
from Axolotl's first ``datasets:`` entry (``path``, ``type``, ``field_*``,
``message_property_mappings``) or from LLaMA-Factory's ``dataset:`` entry in
``dataset_dir/dataset_info.json`` (``file_name``, ``formatting``, ``columns``); everything else
is listed as having no equivalent (with what to do instead), never dropped silently.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import typing
from pathlib import Path

import yaml

from lorakit.config import LoraConfig
from lorakit.train import config_io, peer_config
from lorakit.train.config import TrainConfig

# Axolotl dataset type -> lorakit format
AXOLOTL_TYPES = {"alpaca": "instruction", "alpaca_chat": "instruction",
                 "alpaca_w_system.load_open_orca": "instruction", "chat_template": "chat",
                 "sharegpt": "chat", "completion": "text"}
_AXOLOTL_FIELDS = {"field_instruction": "instruction", "field_input": "input",
                   "field_output": "output", "field_system": "system", "field_messages": "messages",
                   "field": "text"}
_LLAMAFACTORY_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output",
                         "system": "system", "history": "history", "messages": "conversations"}
_DEFAULTS = {"path", "type", "ds_type", "data_files", "split", "roles_to_train", "train_on_eos"}


def _axolotl_dataset(entries, base: Path, unknown: dict[str, str]) -> dict:
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        unknown["datasets"] = "expected a list of {path, type} entries"
        return {}
    if len(entries) > 1:
        unknown["datasets[1:]"] = f"{len(entries) - 1} more data sets: lorakit trains on one file"
    entry = entries[0]
    path = _path(str(entry.get("path", "")), base)
    split = entry.get("split", "train")
    if not Path(path).exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        path = f"hf:{path}" + (f":{split}" if split != "train" else "")  # a Hub data set
    elif split != "train":
        unknown["datasets[0].split"] = f"split {split!r}: lorakit reads the train split"
    out: dict = {"data": path}
    kind = entry.get("type")
    if isinstance(kind, str) and kind in AXOLOTL_TYPES:
        out["format"] = AXOLOTL_TYPES[kind]
        if kind == "chat_template":
            out["instruction_template"] = "chat"
    elif kind is not None:
        unknown["datasets[0].type"] = (f"{kind!r}: lorakit reads {', '.join(AXOLOTL_TYPES)}")
    columns = {target: entry[key] for key, target in _AXOLOTL_FIELDS.items() if key in entry
               and entry[key] != target}
    mappings = entry.get("message_property_mappings") or {}
    for target in ("role", "content"):
        source = mappings.get(target) or entry.get(f"message_field_{target}")
        if source and source not in (target, {"role": "from", "content": "value"}[target]):
            columns[target] = source
    if columns:
        out["columns"] = columns
    if entry.get("roles_to_train", ["assistant"]) != ["assistant"]:
        unknown["datasets[0].roles_to_train"] = ("lorakit trains assistant turns; mark other "
                                                 "turns with train: true in the data")
    known = _DEFAULTS | set(_AXOLOTL_FIELDS) | {"message_property_mappings", "message_field_role",
                                                "message_field_content"}
    for key in entry:
        if key not in known:
            unknown[f"datasets[0].{key}"] = "no lorakit equivalent"
    return out


def _llamafactory_dataset(name, directory: Path, unknown: dict[str, str]) -> dict:
    info_path = directory / "dataset_info.json"
    names = [n.strip() for n in str(name).split(",")]
    if len(names) > 1:
        unknown["dataset"] = f"{len(names)} data sets: lorakit trains on one file"
    if not info_path.is_file():
        unknown["dataset"] = f"{info_path} not found: set data: to the data file"
        return {}
    info = json.loads(info_path.read_text()).get(names[0])
    if not isinstance(info, dict) or "file_name" not in info:
        unknown["dataset"] = f"{names[0]!r} has no file_name entry in {info_path}"
        return {}
    out: dict = {"data": str(directory / info["file_name"])}
    chat = info.get("formatting", "alpaca") == "sharegpt"
    out["format"] = "chat" if chat else "instruction"
    columns = {}
    for source_key, column in (info.get("columns") or {}).items():
        target = _LLAMAFACTORY_COLUMNS.get(source_key)
        if target is None:
            unknown[f"dataset_info {names[0]}.columns.{source_key}"] = "no lorakit equivalent"
        elif not (target == column or (chat and source_key == "messages" and column == "conversations")):
            columns[target] = column
    tags = info.get("tags") or {}
    if tags.get("role_tag", "from") != "from" or tags.get("content_tag", "value") != "value":
        columns.update(role=tags.get("role_tag", "from"), content=tags.get("content_tag", "value"))
    if {k: v for k, v in tags.items() if k not in ("role_tag", "content_tag")} not in (
            {}, {"user_tag": "human", "assistant_tag": "gpt"},
            {"user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}):
        unknown[f"dataset_info {names[0]}.tags"] = "custom speaker names: rename them to user/assistant"
    if columns:
        out["columns"] = columns
    return out


def _path(value: str, base: Path) -> str:
    if not value or value.startswith("hf:") or Path(value).is_absolute():
        return value
    local = base / value
    return os.path.normpath(local) if local.exists() else value


def convert(values: dict, base: Path) -> tuple[dict, dict[str, str], list[str]]:
    """(lorakit config dict, ``{peer key: why it has no equivalent}``, rename notes) of a peer
    config whose relative paths are relative to ``base``."""
    values, unknown, notes = peer_config.translate(values)
    out: dict = {}
    if "datasets" in values:
        out.update(_axolotl_dataset(values.pop("datasets"), base, unknown))
        unknown.pop("datasets", None) if out else None
    if "dataset" in values:
        directory = base / str(values.pop("dataset_dir", "data"))
        out.update(_llamafactory_dataset(values.pop("dataset"), directory, unknown))
        unknown.pop("dataset_dir", None)
        unknown.pop("dataset", None) if out.get("data") else None
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    lora_fields = {f.name for f in dataclasses.fields(LoraConfig)}
    for key, value in values.items():
        if key == "lora" and isinstance(value, dict):
            out["lora"] = {k: v for k, v in value.items() if k in lora_fields}
            unknown.update({f"lora.{k}": "no lorakit equivalent" for k in value
                            if k not in lora_fields})
        elif key in fields:
            out[key] = value
        else:
            unknown.setdefault(key, "no lorakit equivalent")
    if isinstance(out.get("output_dir"), str) and not Path(out["output_dir"]).is_absolute():
        out["output_dir"] = os.path.normpath(base / out["output_dir"])
    hints = typing.get_type_hints(TrainConfig)
    out = {k: config_io.yaml_number(v, hints[k]) if k in hints else v for k, v in out.items()}
    return out, unknown, notes


def convert_file(path: str | Path, out_path: str | Path | None) -> tuple[str, dict[str, str]]:
    """The lorakit YAML text for a peer config file (paths relative to ``out_path``'s
    directory, or absolute when printing), checked by loading it; and what has no equivalent."""
    path = Path(path)
    values = config_io.load_yaml(path, relative_to_file=False)
    config, unknown, notes = convert(values, path.parent)
    for key in ("data", "eval_data", "output_dir", "model"):
        value = config.get(key)
        if isinstance(value, str) and os.path.exists(value):
            config[key] = os.path.abspath(value)
    config_io.from_dict(config, f"{path} (converted)")  # the result loads, or this names why
    if out_path:
        target_dir = Path(out_path).resolve().parent
        for key in ("data", "eval_data", "output_dir", "model"):
            value = config.get(key)
            if isinstance(value, str) and os.path.isabs(value):
                config[key] = os.path.relpath(value, target_dir)
    header = [f"# lorakit config converted from {path} by `lorakit config convert`."]
    header += [f"# renamed: {', '.join(notes)}"] if notes else []
    header += [f"# no lorakit equivalent (left out): {key}: {why}" for key, why in unknown.items()]
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False), unknown


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("config", help="convert Axolotl / LLaMA-Factory configs")
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("convert", help="write the lorakit equivalent of an Axolotl or "
                                       "LLaMA-Factory training YAML",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="the peer's YAML config")
    p.add_argument("-o", "--out", help="write the lorakit YAML here (default: print it)")
    p.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    text, unknown = convert_file(args.file, args.out)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    for key, why in unknown.items():
        print(f"no lorakit equivalent: {key}: {why}", file=sys.stderr)
    return 0
