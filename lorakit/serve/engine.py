"""The serving engine: iteration-level (continuous) batching over one base model and many
adapters, in one background thread.

Each iteration: run queued calls (slot bookkeeping from the API), drop cancelled and timed-out
requests, admit waiting requests while the batch has room and the step's prefill budget lasts
(each pins an adapter slot; they are prefilled in groups of similar prompt length, one
left-padded forward per group, into a KV cache that then joins the running batch's), and run
one decode step for every running sequence together. Row ``b`` of a step uses its request's
adapter slot, so requests for different adapters share every base matmul. Finished sequences
leave the batch between steps.

Isolation: what happens to one row after the shared forward (choosing its token, decoding its
text, a stop string) is contained in that row: a failure ends that request alone with 500. A
prefill forward that fails for a group is retried one request at a time, so only the request
that fails alone is answered with 500. Admission is in arrival order (``_admit``).

The API thread only calls ``submit``, ``call_soon``, ``close`` and ``stop``; results come back
through each request's ``emit`` callable (``Delta``, then ``Done`` or ``Failed``), called from
the engine thread.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from lorakit.serve.cache import HostAdapter
from lorakit.serve.config import ServeConfig
from lorakit.serve.kvbatch import BatchKV, new_cache
from lorakit.serve.metrics import ServerMetrics
from lorakit.serve.sampling import SamplingParams, make_generator, next_tokens
from lorakit.serve.slots import SlotPool
from lorakit.serve.textstream import TextStream
from lorakit.serve.threads import release_openmp_pool

log = logging.getLogger("lorakit.serve")


class QueueFull(Exception):
    """The waiting queue is at its bound (HTTP 429)."""


class EngineClosed(Exception):
    """The engine is shutting down and takes no new requests (HTTP 503)."""


@dataclass
class Delta:
    text: str


@dataclass
class Done:
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    status: int  # the HTTP status the API answers with
    message: str


@dataclass(eq=False)
class Request:
    """One generation. ``adapter`` None runs the base model. ``emit`` receives events from the
    engine thread; ``cancel()`` may be called from any thread."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[object], None]
    adapter: HostAdapter | None = None
    timeout: float | None = None
    created: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    # engine-thread state
    slot: int = -1
    admitted: float | None = None  # time.monotonic() when it left the waiting queue
    stream: TextStream | None = None
    generator: torch.Generator | None = None
    last_token: int = -1
    generated: int = 0
    finished: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def expired(self, now: float) -> bool:
        return self.timeout is not None and now - self.created > self.timeout


def eos_ids(model, tokenizer) -> set[int]:
    """Token ids that end a sequence: the model's generation config and the tokenizer's EOS."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def prefill_groups(requests: list[Request], max_padding: float = 0.25) -> list[list[Request]]:
    """Split ``requests`` into groups of similar prompt length, one prefill forward each: sorted
    by length, a group closes when padding would exceed ``max_padding`` of its tokens."""
    groups: list[list[Request]] = []
    real = 0
    for req in sorted(requests, key=lambda r: len(r.prompt_ids)):
        n = len(req.prompt_ids)  # the longest so far: it sets the group's width
        if groups and n * (len(groups[-1]) + 1) <= (1 + max_padding) * (real + n):
            groups[-1].append(req)
            real += n
        else:
            groups.append([req])
            real = n
    return groups


class Engine:
    def __init__(self, model, tokenizer, pool: SlotPool, max_batch: int = ServeConfig.max_batch,
                 max_queue: int = ServeConfig.max_queue,
                 prefill_tokens_per_step: int = ServeConfig.prefill_tokens_per_step,
                 metrics: ServerMetrics | None = None):
        self.model, self.tokenizer, self.pool = model, tokenizer, pool
        self.max_batch, self.max_queue = max_batch, max_queue
        self.prefill_tokens_per_step = prefill_tokens_per_step
        self.metrics = metrics or ServerMetrics()
        if any(getattr(layer, "is_sliding", False) for layer in DynamicCache(config=model.config).layers):
            raise ValueError(f"{type(model).__name__} uses sliding-window attention, whose cache cannot "
                             "be batched by left padding; lorakit serve does not support it")
        self.eos = eos_ids(model, tokenizer)
        self.max_length = getattr(model.config, "max_position_embeddings", None) or 1 << 30
        params = inspect.signature(model.forward).parameters
        # transformers >= 5.x names the KV cache argument ``cache``; older versions ``past_key_values``.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self._cv = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._calls: list[Callable[[], None]] = []
        self._running: list[Request] = []
        self._kv = BatchKV()
        self._closed = self._stopping = False
        self._in_flight = 0  # submitted and not yet answered with Done/Failed
        self._thread: threading.Thread | None = None

    # ---- API side ---------------------------------------------------------------------------
    def start(self) -> "Engine":
        """Start the engine thread. The calling thread (the one that loaded the model) gives
        its OpenMP worker pool back first, so that the engine's is the only one: two pools on
        a small machine make every torch op wait on a futex (lorakit/serve/threads.py)."""
        release_openmp_pool()
        self._thread = threading.Thread(target=self._loop, name="lorakit-engine", daemon=True)
        self._thread.start()
        return self

    def submit(self, request: Request) -> None:
        with self._cv:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (limit {self.max_queue})")
            self._waiting.append(request)
            self._in_flight += 1
            self._cv.notify()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the engine thread before its next step."""
        with self._cv:
            self._calls.append(fn)
            self._cv.notify()

    def counts(self) -> tuple[int, int]:
        """(running, waiting) right now."""
        return len(self._running), len(self._waiting)

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet answered (Done or Failed)."""
        return self._in_flight

    def close(self) -> None:
        """Take no new requests; the ones in flight go on."""
        with self._cv:
            self._closed = True

    def stop(self, drain_timeout: float = 0.0) -> None:
        """Close, give in-flight requests up to ``drain_timeout`` seconds to finish, then fail
        the rest with 503 and end the thread."""
        self.close()
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and self._in_flight:
            time.sleep(0.05)
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()

    # ---- engine thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._waiting or self._running or self._calls or self._stopping):
                        self._cv.wait()
                    if self._stopping:
                        break
                    calls, self._calls = self._calls, []
                for fn in calls:
                    try:
                        fn()
                    except Exception:  # bookkeeping for one adapter must not fail the batch
                        log.exception("engine call failed")
                try:
                    self._step()
                except Exception as err:  # a failing forward must not kill the server
                    log.exception("engine step failed")
                    self._fail_running(500, f"generation failed: {type(err).__name__}: {err}")
        self._fail_running(503, "the server shut down before this request finished")
        with self._cv:
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting:
            self._end(req, Failed(503, "the server shut down before this request started"))

    def _step(self) -> None:
        self._drop_expired()
        admitted = self._admit()
        try:
            for group in prefill_groups(admitted):
                self._prefill(group)
        except Exception as err:  # admitted requests are in no list yet: answer them here
            for req in admitted:
                if req not in self._running:
                    self._end(req, Failed(500, f"generation failed: {type(err).__name__}: {err}"))
            raise
        if self._running:
            self._decode()

    def _drop_expired(self) -> None:
        now = time.monotonic()
        with self._cv:
            gone = [r for r in self._waiting if r.cancelled or r.expired(now)]
            for req in gone:
                self._waiting.remove(req)
        keep = []
        for i, req in enumerate(self._running):
            if req.cancelled or req.expired(now):
                gone.append(req)
            else:
                keep.append(i)
        if len(keep) < len(self._running):
            self._kv.keep(keep)
            self._running = [self._running[i] for i in keep]
        for req in gone:  # a cancelled request's client is gone: _end sends it nothing
            self._end(req, Failed(504, f"request timed out after {req.timeout:g} s") if not req.cancelled
                      else Failed(499, "the client went away"))

    def _admit(self) -> list[Request]:
        """Take waiting requests in arrival order while the batch has room and this step's
        prefill budget lasts.

        Fairness: once a request finds every slot pinned, no later request that needs a slot
        is admitted before it (a later request for a resident adapter would pin the slot it
        waits for, and could do so forever); later base-model requests, which pin no slot,
        still are. So a request waits at most for the running sequences of the slots ahead
        of it, never for requests that arrived after it."""
        picked, budget, blocked = [], self.prefill_tokens_per_step, False
        now = time.monotonic()
        with self._cv:
            for req in list(self._waiting):
                if len(self._running) + len(picked) >= self.max_batch or budget <= 0:
                    break
                if req.adapter is not None:
                    if blocked:
                        continue
                    misses = self.pool.misses
                    try:
                        slot = self.pool.acquire(req.adapter)
                    except ValueError as err:  # e.g. a rank above the pool's
                        self._waiting.remove(req)
                        self._end(req, Failed(422, str(err)))
                        continue
                    if slot is None:
                        blocked = True
                        continue
                    req.slot = slot
                    result = "miss" if self.pool.misses > misses else "hit"
                    self.metrics.adapter_cache.inc(1, "slot", result)
                self._waiting.remove(req)
                req.admitted = now
                self.metrics.queue_wait.observe(now - req.created)
                picked.append(req)
                budget -= len(req.prompt_ids)
        return picked

    def _forward(self, input_ids, cache, slots: list[int], **kw):
        self.pool.activate(slots)
        return self.model(input_ids=input_ids, use_cache=True, **{self._cache_arg: cache}, **kw)

    def _prefill(self, group: list[Request]) -> None:
        """One forward over ``group``'s prompts, left-padded to the longest (a padded key is
        masked; positions count real tokens only), then each row's first token; rows that go
        on join the running batch with their KV cache. If the forward fails, each request is
        prefilled alone, so only one that fails by itself is answered with 500."""
        lengths = [len(r.prompt_ids) for r in group]
        width, pad = max(lengths), self.tokenizer.pad_token_id or 0
        kw = dict(self._keep_last)
        ids = torch.tensor([[pad] * (width - n) + r.prompt_ids for r, n in zip(group, lengths)])
        if len(set(lengths)) > 1:
            mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
            kw.update(attention_mask=mask.to(self.pool.device),
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(self.pool.device))
        try:
            cache = new_cache()
            out = self._forward(ids.to(self.pool.device), cache, [r.slot for r in group], **kw)
        except Exception as err:
            if len(group) > 1:
                log.warning("prefill of %d requests failed (%s: %s); prefilling them one at a time",
                            len(group), type(err).__name__, err)
                for req in group:
                    self._prefill([req])
                return
            log.exception("prefill failed")
            self._end(group[0], Failed(500, f"generation failed: {type(err).__name__}: {err}"))
            return
        self.metrics.prompt_tokens.inc(sum(lengths))
        for req in group:
            req.stream = TextStream(self.tokenizer, req.params.stop)
            req.generator = make_generator(req.params.seed)
        tokens = next_tokens(out.logits[:, -1], [r.params for r in group], [r.generator for r in group])
        keep = self._take(group, tokens)
        if keep:
            joining = BatchKV()
            joining.join(cache, lengths)
            joining.keep(keep)
            self._kv.join(joining.cache, joining.lengths)
            self._running += [group[i] for i in keep]

    def _decode(self) -> None:
        reqs = self._running
        ids = torch.tensor([[r.last_token] for r in reqs], device=self.pool.device)
        positions = torch.tensor([[n] for n in self._kv.lengths], device=self.pool.device)
        mask = self._kv.mask(1).to(self.pool.device)
        out = self._forward(ids, self._kv.cache, [r.slot for r in reqs], attention_mask=mask,
                            position_ids=positions)
        self._kv.grew(1)
        self.metrics.batch_size.observe(len(reqs))
        tokens = next_tokens(out.logits[:, -1], [r.params for r in reqs], [r.generator for r in reqs])
        keep = self._take(reqs, tokens)
        if len(keep) < len(reqs):
            self._kv.keep(keep)
            self._running = [reqs[i] for i in keep]

    def _take(self, reqs: list[Request], tokens: list[int]) -> list[int]:
        """Advance row ``i`` by ``tokens[i]`` (-1: its logits were not finite); return the rows
        that go on. A row that fails here is answered with 500 alone."""
        keep = []
        for i, (req, token) in enumerate(zip(reqs, tokens)):
            try:
                if token < 0:
                    log.warning("request failed: the model's logits are not finite (adapter %s)",
                                req.adapter.name if req.adapter else "none")
                    self._end(req, Failed(500, "generation failed: the model's logits for this request "
                                               "are not finite (NaN or inf); the adapter's weights may be "
                                               "too large for the serving dtype"))
                elif self._advance(req, token):
                    keep.append(i)
            except Exception as err:  # a bug in one row's text handling ends that row only
                log.exception("request failed after its forward")
                self._end(req, Failed(500, f"generation failed: {type(err).__name__}: {err}"))
        return keep

    def _advance(self, req: Request, token: int) -> bool:
        """Take one new token for ``req``; emit text; return False once it finished."""
        req.generated += 1
        self.metrics.generation_tokens.inc()
        if req.generated == 1:
            self.metrics.ttft.observe(time.monotonic() - req.created)
        if token in self.eos:
            return self._finish(req, "stop")
        req.last_token = token
        delta = req.stream.push(token)
        if delta:
            req.emit(Delta(delta))
        if req.stream.stopped:
            return self._finish(req, "stop")
        if req.generated >= req.params.max_tokens or len(req.prompt_ids) + req.generated >= self.max_length:
            return self._finish(req, "length")
        return True

    def _finish(self, req: Request, reason: str) -> bool:
        tail = req.stream.finish()
        if tail:
            req.emit(Delta(tail))
        self._end(req, Done(reason, req.stream.text, len(req.prompt_ids), req.generated))
        return False

    def _end(self, req: Request, event) -> None:
        """Answer ``req`` for good, once (a cancelled request's client is gone: nothing is sent)."""
        if req.finished:
            return
        req.finished = True
        self._release(req)
        if not req.cancelled or isinstance(event, Done):
            req.emit(event)
        with self._cv:
            self._in_flight -= 1

    def _release(self, req: Request) -> None:
        if req.slot >= 0:
            self.pool.release(req.slot)
            req.slot = -1

    def _fail_running(self, status: int, message: str) -> None:
        running, self._running = self._running, []
        self._kv = BatchKV()
        for req in running:
            self._end(req, Failed(status, message))
