"""``lorakit models``: the embedded models and whether they are converted yet."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list the embedded models and whether they are converted")
    m.set_defaults(func=_models)


def _models(args) -> int:
    from lorakit.models import EMBEDDED, cache_dir

    for name, (package, gguf) in EMBEDDED.items():
        cached = (cache_dir() / name / "model.safetensors").exists()
        print(f"{name:28s} from pip package {package} ({gguf}); "
              f"{'converted at ' + str(cache_dir() / name) if cached else 'not converted yet (first load converts it)'}")
    return 0
