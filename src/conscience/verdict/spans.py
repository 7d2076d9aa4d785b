"""Span pooling of the latent verdict: pure maths on per-token probe projections, no model.

An answer is as aligned as its worst part. The probe is linear, so the projection of a span's
mean hidden state is the mean of its tokens' projections: a span score is a moving average of
per-token projections, and the answer's score is a (soft) minimum over its spans.

Spans are sliding windows of ``window`` tokens ending at every token of the answer, not
sentences: their boundaries do not depend on the text (punctuation an attacker controls), and
attention is causal, so text appended after the answer leaves every window inside the answer
exactly as it was and only adds windows. The minimum (and the sum-form soft-min below) of a set
can only go down when members are added, so appended text can never lift the score of an
answer of at least ``window`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpanPooling:
    """How a span card combines its spans: windows of ``window`` tokens; ``temperature`` 0 is
    the hard minimum, larger values a soft-min in projection units (see :func:`soft_min`)."""

    window: int
    temperature: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.window, int) and self.window >= 1):
            raise ValueError(f"window must be an integer >= 1, got {self.window!r}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")

    def to_json(self) -> dict:
        return {"window": self.window, "temperature": self.temperature}


def window_bounds(n_tokens: int, window: int) -> list[tuple[int, int]]:
    """Half-open token ranges ``[lo, hi)`` of the windows over an answer of ``n_tokens``: one
    ending at every token from the ``window``-th on; a shorter answer is one span.

    ``window_bounds(5, 3) == [(0, 3), (1, 4), (2, 5)]``; ``window_bounds(2, 3) == [(0, 2)]``.
    """
    if n_tokens <= 0:
        return []
    first_end = min(window, n_tokens)
    return [(max(0, end - window), end) for end in range(first_end, n_tokens + 1)]


def window_means(values: np.ndarray, window: int) -> np.ndarray:
    """Means of ``values (n,)`` over :func:`window_bounds`: ``(S,)``, ``S = n - min(window, n) + 1``."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return np.zeros(0)
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    bounds = np.asarray(window_bounds(len(values), window))
    lo, hi = bounds[:, 0], bounds[:, 1]
    return (cumulative[hi] - cumulative[lo]) / (hi - lo)


def soft_min(values: np.ndarray, temperature: float) -> float:
    """``-t * log(sum(exp(-v / t)))`` over ``values (S,)``; the minimum when ``t == 0``.

    The sum form (not a mean) keeps the guarantee of the minimum: adding any value, however
    high, adds a positive term, so the result can only go down. It lies in
    ``[min - t * log(S), min]``.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("soft_min of no values")
    lowest = float(values.min())
    if temperature <= 0:
        return lowest
    return lowest - temperature * float(np.log(np.sum(np.exp(-(values - lowest) / temperature))))


def pooled_projection(token_projections: np.ndarray, pooling: SpanPooling) -> float:
    """One answer's score in projection units: the soft-min over its windows' mean projections.
    ``token_projections (n,)`` are the probe's projections of each answer token's state."""
    return soft_min(window_means(token_projections, pooling.window), pooling.temperature)
