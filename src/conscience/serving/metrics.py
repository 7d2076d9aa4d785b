"""Prometheus text-format metrics, kept by hand (no client library needed)."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_COUNTERS = {
    "conscience_requests_total": "Chat completion requests, by outcome (abandoned: the client went away).",
    "conscience_flagged_total": "Drafts the conscience flagged.",
    "conscience_revised_total": "Answers replaced by a reviewed alternative.",
    "conscience_blocked_total": "Answers withheld by the block action.",
    "conscience_unresolved_total": "Revise action: answers whose every candidate stayed flagged.",
    "conscience_checker_failures_total": "Reviews that raised or timed out.",
    "conscience_pairs_total": "Preference pairs recorded from traffic.",
    "conscience_learn_updates_total": "Background LoRA updates, by result.",
}


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Metrics:
    """Counters, one gauge and the request latency histogram; safe across threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], float] = defaultdict(float)
        self._buckets = [0] * len(LATENCY_BUCKETS)
        self._latency_sum = 0.0
        self._latency_count = 0
        self.in_flight = 0
        self._tracked: dict[str, tuple[str, Callable[[], float]]] = {}

    def track(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge read when rendered (e.g. the queue's length)."""
        self._tracked[name] = (help_text, read)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        if name not in _COUNTERS:
            raise KeyError(f"unknown metric {name}")
        with self._lock:
            self._counts[(name, _labels(labels))] += value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counts.get((name, _labels(labels)), 0.0)

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency_sum += seconds
            self._latency_count += 1
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1

    def mean_latency(self) -> float | None:
        """The mean time to answer a chat completion so far (None before the first)."""
        with self._lock:
            return self._latency_sum / self._latency_count if self._latency_count else None

    def gauge_in_flight(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta

    def render(self) -> str:
        """The exposition text (``text/plain; version=0.0.4``)."""
        lines = []
        for name, (help_text, read) in self._tracked.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        with self._lock:
            for name, help_text in _COUNTERS.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
                series = [(lab, v) for (n, lab), v in sorted(self._counts.items()) if n == name]
                for lab, value in series or [("", 0.0)]:
                    lines.append(f"{name}{lab} {value:g}")
            lines += ["# HELP conscience_in_flight Requests being answered now.", "# TYPE conscience_in_flight gauge",
                      f"conscience_in_flight {self.in_flight}"]
            name = "conscience_request_latency_seconds"
            lines += [f"# HELP {name} Time to answer a chat completion, review included.", f"# TYPE {name} histogram"]
            for bound, count in zip(LATENCY_BUCKETS, self._buckets, strict=True):
                lines.append(f'{name}_bucket{{le="{bound:g}"}} {count}')
            lines += [f'{name}_bucket{{le="+Inf"}} {self._latency_count}', f"{name}_sum {self._latency_sum:.6f}",
                      f"{name}_count {self._latency_count}"]
        return "\n".join(lines) + "\n"
