"""Everything one server holds, built from a ServeConfig: the base model with its slot pool, the
host adapter cache, the adapter registry, the engine and the metrics. The HTTP layer
(``api.py``) only talks to this object."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from lorakit.serve.cache import HostAdapter, HostCache
from lorakit.serve.config import ServeConfig
from lorakit.serve.engine import Engine
from lorakit.serve.metrics import ServerMetrics
from lorakit.serve.registry import AdapterRegistry, RegistryError
from lorakit.serve.slots import SlotPool

log = logging.getLogger("lorakit.serve")


class AdapterUnavailable(Exception):
    """A known adapter that cannot be served (unreadable or unservable files)."""


class Server:
    def __init__(self, config: ServeConfig, model, tokenizer):
        self.config, self.tokenizer = config, tokenizer
        self.model_id = config.model_id
        self.api_key = config.api_key or os.environ.get("LORAKIT_API_KEY", "")
        self.slot_dtype = config.slot_torch_dtype()
        self.max_length = getattr(model.config, "max_position_embeddings", None)
        self.metrics = ServerMetrics()
        self.pool = SlotPool(model.eval(), config.max_slots, config.max_rank, self.slot_dtype)
        self.cache = HostCache(self.pool.layer_shapes, self.slot_dtype, config.host_cache)
        self.registry = AdapterRegistry(config.adapters or None, base_name=self.model_id)
        self.engine = Engine(model, tokenizer, self.pool, config.max_batch, config.max_queue,
                             config.prefill_tokens_per_step, self.metrics)
        for spec in config.adapter:
            name, sep, path = spec.partition("=")
            if not sep:
                raise ValueError(f"--adapter {spec!r}: expected NAME=PATH")
            self.load_adapter(name, path, trusted=True)
        m = self.metrics
        m.gauge("lorakit_running_requests", "Sequences in the running batch", lambda: self.engine.counts()[0])
        m.gauge("lorakit_waiting_requests", "Requests waiting for a batch place", lambda: self.engine.counts()[1])
        m.gauge("lorakit_adapter_slots_used", "Adapter slots holding an adapter", lambda: self.pool.used)
        m.gauge("lorakit_adapter_slots", "Adapter slots in the pool", lambda: self.pool.n_slots)
        m.gauge("lorakit_host_adapters", "Adapters in the host-memory LRU", lambda: len(self.cache))
        m.gauge("lorakit_adapters_known", "Adapters the server can serve by name", lambda: len(self.registry.names()))

    # ---- adapters ---------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | None = None, trusted: bool = False) -> HostAdapter:
        """Register ``name`` and read it into the host cache now, so a bad file fails this call
        (and leaves the server as it was) instead of a later request."""
        resolved = self.registry.add(name, path, trusted=trusted)
        try:
            return self.adapter(name)
        except AdapterUnavailable:
            self.registry.remove(name, sticky=False)
            raise

    def unload_adapter(self, name: str) -> None:
        """Forget ``name``. Requests already running on it finish with the weights they have;
        new requests for it get 404."""
        self.registry.remove(name)
        for adapter in self.cache.drop(name):
            self.engine.call_soon(lambda key=adapter.key: self.pool.forget(key))

    def adapter(self, name: str) -> HostAdapter | None:
        """The adapter a request's ``model`` field names (None: the base model). Unknown names
        raise RegistryError(404) listing the known ones."""
        if name == self.model_id:
            return None
        path = self.registry.lookup(name)
        if path is None:
            raise RegistryError(404, f"model {name!r} not found; known models: {self.model_names()}")
        try:
            adapter = self.cache.get(name, path, lambda result: self.metrics.adapter_cache.inc(1, "host", result))
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as err:  # the files' fault
            raise AdapterUnavailable(f"adapter {name!r} cannot be served: {err}") from None
        if adapter.max_rank > self.pool.max_rank:
            raise AdapterUnavailable(f"adapter {name!r} has rank {adapter.max_rank}; this server holds "
                                     f"ranks up to {self.pool.max_rank} (--max-rank)")
        return adapter

    def model_names(self) -> list[str]:
        return [self.model_id] + self.registry.names()


def build_server(config: ServeConfig) -> Server:
    """Load the base model and tokenizer named by ``config`` and wrap them in a Server."""
    from lorakit.models import load_model, load_tokenizer

    if config.threads:
        torch.set_num_threads(config.threads)
    dtype = getattr(torch, config.dtype)
    log.info("loading %s (%s)", config.model, config.dtype)
    model = load_model(config.model, dtype=dtype)
    tokenizer = load_tokenizer(config.model)
    if config.adapters and not Path(config.adapters).is_dir():
        raise FileNotFoundError(f"--adapters {config.adapters}: not a directory")
    return Server(config, model, tokenizer)
