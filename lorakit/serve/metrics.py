"""Server metrics in the Prometheus text exposition format (version 0.0.4), written by hand:
counters, gauges and histograms with labels, safe to update from any thread."""

from __future__ import annotations

import math
import threading

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _labels(names: tuple[str, ...], values: tuple) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape(str(v))}"' for n, v in zip(names, values))
    return "{" + pairs + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(x: float) -> str:
    if x == math.inf:
        return "+Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help_text, labels
        self._lock = threading.Lock()
        self._values: dict[tuple, object] = {}

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, *labels) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read at scrape time from ``read()`` (so it is never stale)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read):
        super().__init__(name, help_text)
        self.read = read

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_number(self.read())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple, labels: tuple[str, ...] = ()):
        super().__init__(name, help_text, labels)
        self.buckets = tuple(buckets) + (math.inf,)

    def observe(self, value: float, *labels) -> None:
        with self._lock:
            counts, total = self._values.get(labels, ([0] * len(self.buckets), 0.0))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            self._values[labels] = (counts, total + value)

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((k, (list(c), s)) for k, (c, s) in self._values.items())
        for key, (counts, total) in items:
            for bound, count in zip(self.buckets, counts):
                names, values = self.label_names + ("le",), key + (_number(bound),)
                lines.append(f"{self.name}_bucket{_labels(names, values)} {count}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {counts[-1]}")
        return lines


class ServerMetrics:
    """Everything ``GET /metrics`` shows. Gauges read live state through callables set by the
    server once the engine and caches exist."""

    def __init__(self):
        self.requests = Counter("lorakit_requests_total", "HTTP requests by endpoint and status code",
                                ("endpoint", "status"))
        self.prompt_tokens = Counter("lorakit_prompt_tokens_total", "Prompt tokens prefilled")
        self.generation_tokens = Counter("lorakit_generation_tokens_total", "Tokens generated")
        self.adapter_cache = Counter("lorakit_adapter_cache_total",
                                     "Adapter lookups by tier (host LRU, device slots) and result",
                                     ("tier", "result"))
        self.batch_size = Histogram("lorakit_batch_size", "Sequences per decode step", BATCH_BUCKETS)
        self.latency = Histogram("lorakit_request_latency_seconds", "Request latency, arrival to last token",
                                 LATENCY_BUCKETS, ("endpoint",))
        self.ttft = Histogram("lorakit_time_to_first_token_seconds", "Arrival to first generated token",
                              LATENCY_BUCKETS)
        self.queue_wait = Histogram("lorakit_queue_wait_seconds", "Arrival to admission into the batch",
                                    LATENCY_BUCKETS)
        self.gauges: list[Gauge] = []

    def gauge(self, name: str, help_text: str, read) -> None:
        self.gauges.append(Gauge(name, help_text, read))

    def render(self) -> str:
        parts = [self.requests, self.prompt_tokens, self.generation_tokens, self.adapter_cache,
                 self.batch_size, self.latency, self.ttft, self.queue_wait, *self.gauges]
        return "\n".join(line for metric in parts for line in metric.render()) + "\n"
