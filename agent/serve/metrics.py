"""The serving metrics: counted as requests finish, rendered in Prometheus' text format (0.0.4)
for ``/metrics`` and summed in :meth:`ServeMetrics.stats` for the agent's telemetry.

Hand-written (a few counters and histograms) instead of prometheus_client, which would bring a
process-global registry the agent does not want. Updates come from the event loop and stats may
be read from any thread, so both go through one lock.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable

import psutil

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels, extra: Labels = ()) -> str:
    items = labels + extra
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}" if items else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    def __init__(self, name: str, help_: str) -> None:
        self.name, self.help = name, help_
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def total(self) -> float:
        return sum(self.values.values())

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for key, value in sorted(self.values.items() or [((), 0.0)]):  # an unused counter reads 0
            yield f"{self.name}{_labels(key)} {_number(value)}"


class Histogram:
    def __init__(self, name: str, help_: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_, buckets
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}  # counts per bucket, [sum]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts, total = self.series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        total[0] += value

    def sum_count(self) -> tuple[float, int]:
        return (sum(t[0] for _, t in self.series.values()),
                sum(sum(c) for c, _ in self.series.values()))

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for key, (counts, total) in sorted(self.series.items()):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                yield f"{self.name}_bucket{_labels(key, (('le', le),))} {running}"
            yield f"{self.name}_sum{_labels(key)} {_number(total[0])}"
            yield f"{self.name}_count{_labels(key)} {running}"


def gauge(name: str, help_: str, value: float, labels: Labels = ()) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name}{_labels(labels)} {_number(value)}"]


class ServeMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = Counter("slmops_requests_total", "HTTP requests by endpoint and status code.")
        self.errors = Counter("slmops_errors_total", "Requests answered with an error, by endpoint and type.")
        self.prompt_tokens = Counter("slmops_prompt_tokens_total", "Prompt tokens processed.")
        self.completion_tokens = Counter("slmops_completion_tokens_total", "Completion tokens generated.")
        self.cancelled = Counter("slmops_generations_cancelled_total",
                                 "Generations stopped because the client went away.")
        self.ttft = Histogram("slmops_time_to_first_token_seconds",
                              "From request received to first generated text.", TTFT_BUCKETS)
        self.latency = Histogram("slmops_request_latency_seconds",
                                 "From request received to the last byte of the answer.", LATENCY_BUCKETS)
        self.decode_seconds = 0.0  # generation time after the first token, for decode tokens/s
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first reading primes the counter

    def request(self, endpoint: str, status: int, seconds: float, error_type: str | None = None) -> None:
        with self._lock:
            self.requests.inc(endpoint=endpoint, status=str(status))
            if error_type is not None:
                self.errors.inc(endpoint=endpoint, type=error_type)
            self.latency.observe(seconds, endpoint=endpoint)

    def generation(self, prompt_tokens: int, completion_tokens: int, ttft: float | None,
                   decode_seconds: float, cancelled: bool) -> None:
        with self._lock:
            self.prompt_tokens.inc(prompt_tokens)
            self.completion_tokens.inc(completion_tokens)
            if ttft is not None:
                self.ttft.observe(ttft)
            self.decode_seconds += decode_seconds
            if cancelled:
                self.cancelled.inc()

    def stats(self) -> dict[str, float]:
        """Cumulative figures for telemetry; rates come from the difference of two readings
        (decode tokens/s = delta completion_tokens / delta decode_seconds)."""
        with self._lock:
            latency_sum, latency_count = self.latency.sum_count()
            ttft_sum, ttft_count = self.ttft.sum_count()
            return {"requests": self.requests.total(), "errors": self.errors.total(),
                    "prompt_tokens": self.prompt_tokens.total(),
                    "completion_tokens": self.completion_tokens.total(),
                    "cancelled": self.cancelled.total(), "decode_seconds": self.decode_seconds,
                    "latency_seconds_sum": latency_sum, "latency_seconds_count": latency_count,
                    "ttft_seconds_sum": ttft_sum, "ttft_seconds_count": ttft_count}

    def render(self, gauges: Callable[[], list[str]]) -> str:
        """The text exposition: these counters, ``gauges()`` (the server's live state) and the
        process' system gauges."""
        with self._lock:
            lines = [line for metric in (self.requests, self.errors, self.prompt_tokens,
                                         self.completion_tokens, self.cancelled, self.ttft, self.latency)
                     for line in metric.render()]
        lines += gauges()
        try:
            lines += gauge("process_resident_memory_bytes", "Resident memory of the agent.",
                            self._process.memory_info().rss)
            lines += gauge("process_cpu_percent", "CPU use of the agent since the previous scrape "
                            "(100 = one core).", self._process.cpu_percent(None))
            lines += gauge("process_num_threads", "Threads of the agent.", self._process.num_threads())
        except psutil.Error:  # the process table is unreadable here; the rest still counts
            pass
        lines += gauge("system_cpu_percent", "CPU use of the machine since the previous scrape.",
                        psutil.cpu_percent(None))
        lines += gauge("system_memory_available_bytes", "Memory available on the machine.",
                        psutil.virtual_memory().available)
        return "\n".join(lines) + "\n"


