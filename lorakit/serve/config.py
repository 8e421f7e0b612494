"""ServeConfig: every setting of ``lorakit serve``, typed, with each default in one place.

The command-line flags are generated from these fields (``lorakit/serve/cli.py``), so a flag and
its default cannot drift apart from the server's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lorakit.flags import setting as _opt
from lorakit.models import DEFAULT_MODEL


@dataclass
class ServeConfig:
    model: str = _opt(DEFAULT_MODEL, "base model: an embedded name, a local HF directory or a hub id")
    served_model_name: str = _opt("", "name of the base model in the API (default: --model)")
    adapters: str = _opt("", "directory of PEFT adapter directories; each sub-directory is an adapter "
                             "named after it, and POST /v1/adapters may load paths inside it only")
    adapter: list = _opt(None, "NAME=PATH: serve the adapter at PATH as NAME (repeatable; PATH may be anywhere)",
                         action="append", metavar="NAME=PATH")
    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8000, "port to listen on")
    api_key: str = _opt("", "require 'Authorization: Bearer KEY' on every endpoint except /health "
                            "(default: $LORAKIT_API_KEY, else no auth)")
    dtype: str = _opt("bfloat16", "base model dtype", choices=("bfloat16", "float16", "float32"))
    slot_dtype: str = _opt("auto", "adapter-slot dtype (auto: --dtype); float32 keeps adapter weights "
                                   "exact at some speed cost", choices=("auto", "bfloat16", "float16", "float32"))
    threads: int = _opt(0, "torch CPU threads (0: torch's default)")
    max_batch: int = _opt(32, "most sequences decoded together in one step")
    max_slots: int = _opt(32, "adapter slots (distinct adapters in one batch)")
    max_rank: int = _opt(16, "largest adapter rank the slots hold; the mixed-batch LoRA cost "
                             "grows with it, so set it to your largest adapter rank")
    host_cache: int = _opt(128, "adapters kept in host memory (LRU) behind the slots")
    max_queue: int = _opt(256, "requests waiting for a batch place; beyond it the server answers 429")
    max_tokens: int = _opt(1024, "cap on a request's max_tokens")
    default_max_tokens: int = _opt(256, "max_tokens when a request gives none (at most --max-tokens)")
    max_prompt_tokens: int = _opt(2048, "longest prompt accepted (longer: 413)")
    prefill_tokens_per_step: int = _opt(4096, "prompt tokens prefilled between two decode steps")
    request_timeout: float = _opt(300.0, "seconds a request may take in all; then it fails with 504")
    shutdown_timeout: float = _opt(30.0, "seconds to let in-flight requests finish on shutdown")

    def __post_init__(self) -> None:
        positive = ("max_batch", "max_slots", "max_rank", "host_cache", "max_queue", "max_tokens",
                    "default_max_tokens", "max_prompt_tokens", "prefill_tokens_per_step")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"ServeConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.request_timeout <= 0 or self.shutdown_timeout < 0:
            raise ValueError("ServeConfig: request_timeout must be > 0 and shutdown_timeout >= 0")
        self.adapter = list(self.adapter or [])

    @property
    def model_id(self) -> str:
        return self.served_model_name or self.model

    def slot_torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype if self.slot_dtype == "auto" else self.slot_dtype)


def fields():
    return dataclasses.fields(ServeConfig)
