"""One request never hurts another, at the engine level (no HTTP): a request that waits for a
slot and then ends (timeout, cancel, shutdown) is answered and leaves the engine consistent;
a row whose logits are not finite fails alone while its neighbours finish byte-identical;
slots are granted in arrival order, so a request for another adapter is not overtaken by later
requests for the resident one."""

from __future__ import annotations

import copy
import functools
import threading
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.serve.cache import HostCache
from lorakit.serve.engine import Delta, Done, Engine, Failed, Request, prefill_groups
from lorakit.serve.sampling import SamplingParams, next_tokens
from lorakit.serve.slots import SlotPool
from tests.test_serve_support import tiny_setup, tokenizer as load_tokenizer

setup = pytest.fixture(scope="module", name="setup")(tiny_setup)
tokenizer = functools.cache(load_tokenizer)  # one load (~1 s) for the module


class _Run:
    """An engine over a fresh copy of the tiny base with ``n_slots`` slots; ``submit`` returns
    the request, whose final event lands in ``results[request]``."""

    def __init__(self, base, root, n_slots=1, **engine_kw):
        model = copy.deepcopy(base)
        self.pool = SlotPool(model, n_slots, 8)
        self.cache = HostCache(self.pool.layer_shapes, torch.float32)
        self.root = root
        self.engine = Engine(model, tokenizer(), self.pool, **engine_kw)
        self.results: dict[Request, object] = {}
        self.texts: dict[Request, str] = {}
        self.done: dict[Request, threading.Event] = {}
        self.answered: dict[Request, float] = {}

    def submit(self, name, ids, max_tokens, timeout=None, **sampling) -> Request:
        adapter = self.cache.get(name, self.root / name) if name else None
        params = SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, **sampling})
        event = threading.Event()

        def emit(e):
            if isinstance(e, Delta):
                self.texts[req] = self.texts.get(req, "") + e.text
            else:
                self.results[req] = e
                self.answered[req] = time.monotonic()
                event.set()

        req = Request(list(ids), params, emit, adapter, timeout=timeout)
        self.done[req] = event
        self.engine.submit(req)
        return req

    def wait(self, req, seconds=60) -> object:
        assert self.done[req].wait(seconds), "the request was never answered"
        return self.results[req]

    def idle(self) -> None:
        deadline = time.monotonic() + 10
        while (self.engine.in_flight or self.engine.counts() != (0, 0)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.engine.in_flight == 0 and self.engine.counts() == (0, 0)
        assert self.pool.pins == [0] * self.pool.n_slots


def _wait_running(run: _Run, n: int = 1) -> None:
    deadline = time.monotonic() + 30
    while run.engine.counts()[0] < n:
        assert time.monotonic() < deadline
        time.sleep(0.005)


@pytest.mark.parametrize("end", ["timeout", "cancel"])
def test_request_waiting_for_a_slot_ends_cleanly(setup, end):
    """--max-slots 1, one request running on alpha, one waiting for a slot for beta: ending the
    waiting one (timeout or client gone) answers it (504 / nothing) and the running one still
    finishes with its full, correct text (it used to get 500 from a crashed step)."""
    base, root = setup
    ids = tokenizer()("Once upon a time").input_ids
    reference = _Run(base, root)
    reference.engine.start()
    alone = reference.submit("alpha", ids, 100)
    reference.wait(alone)
    reference.engine.stop()

    run = _Run(base, root)
    activate = run.pool.activate
    run.pool.activate = lambda slots: (time.sleep(0.005), activate(slots))  # >= 0.5 s for 100 tokens
    run.engine.start()
    long = run.submit("alpha", ids, 100)
    _wait_running(run)
    waiting = run.submit("beta", ids, 5, timeout=0.05 if end == "timeout" else None)
    if end == "cancel":
        time.sleep(0.1)
        waiting.cancel()
    result = run.wait(long)
    assert isinstance(result, Done) and result.completion_tokens == 100
    assert run.texts[long] == reference.texts[alone]
    if end == "timeout":
        failed = run.wait(waiting)
        assert isinstance(failed, Failed) and failed.status == 504 and "timed out" in failed.message
    run.idle()
    later = run.submit("beta", ids, 3)  # the engine still serves
    assert isinstance(run.wait(later), Done)
    run.engine.stop()


def test_shutdown_answers_a_request_waiting_for_a_slot(setup):
    base, root = setup
    run = _Run(base, root)
    run.engine.start()
    long = run.submit("alpha", [5, 6, 7], 400)
    _wait_running(run)
    waiting = run.submit("beta", [5, 6, 7], 5)
    run.engine.stop()
    for req, where in ((long, "finished"), (waiting, "started")):
        failed = run.wait(req, 5)
        assert isinstance(failed, Failed) and failed.status == 503 and where in failed.message
    assert run.engine.in_flight == 0 and run.pool.pins == [0]


@pytest.fixture(scope="module")
def huge(setup, tmp_path_factory):
    """A copy of alpha whose B factors are 1e38: finite (so it loads), but its logits overflow
    to NaN/inf in float32."""
    _, root = setup
    out = tmp_path_factory.mktemp("huge") / "huge"
    out.mkdir()
    (out / "adapter_config.json").write_text((root / "alpha" / "adapter_config.json").read_text())
    tensors = load_file(root / "alpha" / "adapter_model.safetensors")
    save_file({k: (t.sign() + (t == 0)) * 1e38 if "lora_B" in k else t for k, t in tensors.items()},
              out / "adapter_model.safetensors")
    return out.parent


NEIGHBOURS = {  # (adapter, prompt, temperature) of the good rows
    "adapters-and-base": [("alpha", "Hello there", 0.0), ("beta", "1 2 3", 1.0), (None, "Dear diary", 0.7),
                          ("gamma", "Once upon a time", 0.0), ("alpha", "x", 1.3), (None, "The quick brown", 0.0)],
    "base-only": [(None, "Hello there", 0.0), (None, "1 2 3", 1.0), (None, "Dear diary", 0.0)],
}


@pytest.mark.parametrize("neighbours", list(NEIGHBOURS))
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_row_with_non_finite_logits_fails_alone(setup, huge, temperature, neighbours):
    """Good rows (greedy and seeded sampling; several adapters and base rows, or base rows only,
    so that the batch's one adapter is the hostile one) + one row on an adapter that overflows,
    in slot 0: the good rows finish byte-identical to a run without it, the bad one gets 500
    naming the cause. (Base rows used to get NaN: their masked-out LoRA term was inf * 0.)"""
    base, root = setup
    tok = tokenizer()
    jobs = NEIGHBOURS[neighbours]

    def run_all(with_hostile):
        run = _Run(base, root, n_slots=4)
        if with_hostile:  # first, so that it takes slot 0, whose factors base rows are routed to
            run.root = huge
            bad = run.submit("huge", tok("Hello there").input_ids, 12, temperature=temperature, seed=3)
            run.root = root
        reqs = [run.submit(name, tok(p).input_ids, 12, temperature=t, seed=11 + i)
                for i, (name, p, t) in enumerate(jobs)]
        run.engine.start()
        results = [run.wait(r) for r in reqs]
        out = [(run.texts.get(r, ""), res.completion_tokens) for r, res in zip(reqs, results)]
        hostile = run.wait(bad) if with_hostile else None
        run.idle()
        run.engine.stop()
        return out, hostile

    clean, _ = run_all(False)
    mixed, hostile = run_all(True)
    assert mixed == clean
    assert isinstance(hostile, Failed) and hostile.status == 500 and "not finite" in hostile.message


def test_next_tokens_marks_non_finite_rows_and_tiny_temperatures_are_greedy():
    logits = torch.tensor([[0.0, 3.0, 2.9], [float("nan"), 1.0, 0.0], [float("inf"), 0.0, 0.0],
                           [float("-inf")] * 3, [1.0, 5.0, 2.0]])
    params = [SamplingParams(temperature=t) for t in (1e-40, 1.0, 0.0, 1.0, 1e-6)]
    gens = [torch.Generator().manual_seed(0) for _ in params]
    assert next_tokens(logits, params, gens) == [1, -1, -1, -1, 1]
    for bad in (2**64, -2**63 - 1):
        with pytest.raises(ValueError, match="seed"):
            SamplingParams(seed=bad)
    SamplingParams(seed=2**64 - 1)
    for field, value in (("temperature", float("nan")), ("top_p", float("nan"))):
        with pytest.raises(ValueError, match=field):
            SamplingParams(**{field: value})


def test_slots_are_granted_in_arrival_order(setup):
    """--max-slots 1, alpha running: a request for beta, then 4 later ones for alpha. beta is
    admitted before every later alpha request (it used to be admitted after all four), and its
    wait is bounded by the one request that held the slot."""
    base, root = setup
    run = _Run(base, root)
    run.engine.start()
    first = run.submit("alpha", [5, 6, 7], 40)
    _wait_running(run)
    other = run.submit("beta", [5, 6, 7], 4)
    later = [run.submit("alpha", [8, 9], 4) for _ in range(4)]
    for req in [first, other, *later]:
        assert isinstance(run.wait(req), Done)
    run.engine.stop()
    assert all(other.admitted < r.admitted for r in later), [r.admitted - other.admitted for r in later]
    # beta waited for the one request that held the slot, and not for anything after it
    assert other.admitted - run.answered[first] < 1.0


def test_prefill_failure_fails_only_the_request_that_fails_alone(setup):
    """Three requests prefilled in one group (prompts of one length, queued before the first
    step); the forward fails whenever beta's slot is in it:
    the group is retried one request at a time, alpha and the base finish with their own text
    (equal to a run without beta), and only beta gets 500."""
    base, root = setup
    jobs = [("alpha", [5, 6, 7]), (None, [8, 9, 10]), ("beta", [11, 12, 13])]

    def run_all(with_beta):
        run = _Run(base, root, n_slots=2)
        activate, beta = run.pool.activate, run.cache.get("beta", root / "beta")

        def fragile(slots):
            if any(s >= 0 and run.pool.key_of[s] == beta.key for s in slots):
                raise RuntimeError("simulated failure of beta's forward")
            activate(slots)

        run.pool.activate = fragile
        reqs = [run.submit(name, ids, 6) for name, ids in jobs if with_beta or name != "beta"]
        run.engine.start()
        results = [run.wait(r) for r in reqs]
        run.idle()
        run.engine.stop()
        return [(run.texts.get(r, ""), type(res).__name__) for r, res in zip(reqs, results)], results

    clean, _ = run_all(False)
    mixed, results = run_all(True)
    assert mixed[:2] == clean and [kind for _, kind in clean] == ["Done", "Done"]
    assert isinstance(results[2], Failed) and results[2].status == 500 and "simulated" in results[2].message
    assert calls_of_one_group(jobs) == 1


def calls_of_one_group(jobs) -> int:
    """How many prefill forwards the jobs' prompts take together (1: they share one group)."""
    return len(prefill_groups([Request(ids, SamplingParams(), print) for _, ids in jobs]))
