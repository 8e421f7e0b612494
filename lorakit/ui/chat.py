"""Side-by-side chat: one prompt to the base model and 1-4 adapters at once, through the
serving engine (``lorakit.serve``), so the answers come from one mixed-adapter batch.

The dashboard owns one ``Server`` (base model, adapter slots, engine thread) for the base model
in use; asking for another base model replaces it. The model loads in a worker thread, and
generation runs in the engine's own thread; request handlers only submit and stream.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path

from lorakit.serve.engine import Delta, Done, Failed, Request
from lorakit.serve.sampling import SamplingParams

MAX_ADAPTERS = 4

__all__ = ["ChatHub", "ChatColumn", "MAX_ADAPTERS", "prompt_ids"]


@dataclass
class ChatColumn:
    label: str          # "base" or the run name
    adapter_dir: Path | None


def prompt_ids(tokenizer, prompt: str, template: str) -> list[int]:
    """Token ids of ``prompt`` as one user turn: the tokenizer's chat template (``chat``), or
    the Alpaca prompt that ``instruction_template: alpaca`` trains with (``alpaca``)."""
    if template == "alpaca":
        from lorakit.train.formats import instruction_prompt

        return tokenizer(instruction_prompt({"instruction": prompt, "output": ""}, "chat"))["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this base model's tokenizer has no chat template; use the alpaca prompt")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class ChatHub:
    """Owns the in-process serving engine; ``stream`` yields ``(column, event)`` pairs."""

    def __init__(self, dtype: str = "float32"):
        self.dtype = dtype
        self._lock = threading.Lock()
        self._server = None
        self._model = None

    def _server_for(self, model: str, rank: int):
        """The server for base ``model`` whose slots hold rank ``rank``, built (model loaded)
        on first use and rebuilt for another base or a larger rank (the mixed-batch cost grows
        with the slots' rank, so they are as small as the adapters allow). Worker thread only."""
        from lorakit.serve.config import ServeConfig
        from lorakit.serve.server import build_server

        with self._lock:
            current = self._server
            if current is not None and self._model == model and current.pool.max_rank >= rank:
                return current
            if current is not None:
                current.engine.stop()
                self._server = None
            config = ServeConfig(model=model, dtype=self.dtype, max_slots=MAX_ADAPTERS,
                                 max_rank=max(16, rank), max_batch=MAX_ADAPTERS + 1)
            server = build_server(config)
            server.engine.start()
            self._server, self._model = server, model
            return server

    def _adapter(self, server, column: ChatColumn):
        if column.adapter_dir is None:
            return None
        from lorakit.serve.registry import RegistryError

        path = Path(column.adapter_dir).resolve()
        known = server.registry.lookup(column.label)
        if known is not None and known != path:  # the run now has a newer adapter
            server.unload_adapter(column.label)
            known = None
        if known is None:
            try:
                return server.load_adapter(column.label, str(path), trusted=True)
            except RegistryError as err:
                raise ValueError(str(err)) from None
        return server.adapter(column.label)

    def prepare(self, model: str, columns: list[ChatColumn], prompt: str, template: str):
        """Load what the columns need and tokenize; returns ``(server, adapters, ids)``."""
        from lorakit.serve.threads import serial_openmp

        serial_openmp()  # adapter reads here must not start a second OpenMP pool
        server = self._server_for(model, max((_rank(c.adapter_dir) for c in columns), default=1))
        adapters = [self._adapter(server, c) for c in columns]
        return server, adapters, prompt_ids(server.tokenizer, prompt, template)

    async def stream(self, model: str, columns: list[ChatColumn], prompt: str, template: str,
                     params: SamplingParams):
        """Submit one request per column in one go (the engine batches them together) and
        yield ``(index, Delta | Done | Failed)`` as the engine emits them."""
        server, adapters, ids = await asyncio.to_thread(self.prepare, model, columns, prompt, template)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        requests = []
        for i, adapter in enumerate(adapters):
            def emit(event, i=i):
                loop.call_soon_threadsafe(queue.put_nowait, (i, event))
            requests.append(Request(list(ids), params, emit, adapter, timeout=300.0))
        # Submitted from the engine thread before its next step, so all are admitted together
        # and share one prefill forward and every decode step (the mixed-adapter batch).
        server.engine.call_soon(lambda: [server.engine.submit(r) for r in requests])
        open_columns = len(requests)
        try:
            while open_columns:
                i, event = await queue.get()
                if isinstance(event, (Done, Failed)):
                    open_columns -= 1
                yield i, event
        finally:
            for req in requests:
                req.cancel()

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.engine.stop()
                self._server = None


def _rank(adapter_dir: Path | None) -> int:
    """The largest rank in an adapter directory's config (0 for the base column)."""
    if adapter_dir is None:
        return 0
    from lorakit.config import load_config

    cfg = load_config(adapter_dir)
    return max([getattr(cfg, "r", 0), *(getattr(cfg, "rank_pattern", None) or {}).values()])


def event_json(index: int, event) -> dict:
    if isinstance(event, Delta):
        return {"column": index, "delta": event.text}
    if isinstance(event, Done):
        return {"column": index, "done": True, "finish_reason": event.finish_reason,
                "completion_tokens": event.completion_tokens}
    return {"column": index, "error": event.message, "status": event.status}
