"""Server metrics in the Prometheus text exposition format (version 0.0.4), written here (no dependency).

Updated only from the server's event loop thread, so no locks."""
from __future__ import annotations

import bisect
import collections
import math
from typing import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "mamba_deploy"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Cumulative-bucket histogram: observe(seconds); lines(name) in exposition format."""

    def __init__(self, buckets: Sequence[float]):
        self.bounds = list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf only)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.bounds + [math.inf], self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{_number(bound)}"}} {running}')
        return out + [f"{name}_sum {_number(self.sum)}", f"{name}_count {self.count}"]


class Metrics:
    """Counters and histograms of one server; render(queue_depth, running, slots) -> exposition text."""

    def __init__(self):
        self.requests: collections.Counter = collections.Counter()  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def render(self, queue_depth: int, running: int, slots: int) -> str:
        lines: list[str] = []
        _family(lines, "requests_total", "counter", "HTTP requests by endpoint and response status.",
                [f'{{endpoint="{_label(e)}",status="{s}"}} {n}' for (e, s), n in sorted(self.requests.items())])
        _family(lines, "prompt_tokens_total", "counter", "Prompt tokens of the submitted requests.",
                [f" {self.prompt_tokens}"])
        _family(lines, "generation_tokens_total", "counter", "Tokens generated (sampled), all requests.",
                [f" {self.generation_tokens}"])
        _family(lines, "queue_depth", "gauge", "Requests waiting for a slot.", [f" {queue_depth}"])
        _family(lines, "running_requests", "gauge", "Requests holding a slot (the running batch).", [f" {running}"])
        _family(lines, "slots", "gauge", "State slots (the largest running batch).", [f" {slots}"])
        for attr, name, help_text in (
                ("ttft", "time_to_first_token_seconds", "From request arrival to its first output piece."),
                ("itl", "inter_token_latency_seconds", "Between consecutive output pieces of a request.")):
            lines += [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} histogram"]
            lines += getattr(self, attr).lines(f"{PREFIX}_{name}")
        return "\n".join(lines) + "\n"


def _family(lines: list[str], name: str, kind: str, help_text: str, samples: list[str]) -> None:
    lines += [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}"]
    lines += [f"{PREFIX}_{name}{sample}" for sample in samples]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value))
