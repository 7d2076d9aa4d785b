"""Fitting a span card: pure maths on per-token features, no model.

Records: ``tokens`` is a list of ``N`` arrays ``(n_i, H)``, each answer's token states averaged
over the card's layers; ``y (N,)`` 1 = aligned; ``g (N,)`` the triple a record belongs to (an
injected copy shares its source's group, so a fold never scores a copy of an answer it was
fitted on); ``clean (N,)`` marks the records that are not injected copies.

Why the direction is fitted on whole-answer means and only the score mapping on span scores:
answer labels are clean, span labels are not (the "Sure, here is how" window of a harmful
answer is not harmful), so fitting a direction on spans would learn from noisy labels. The
probe is linear, so a direction that separates answer means separates the spans whose
average they are. What the soft-min does change is the scale and offset of the scores (a
minimum sits below a mean, more so for long answers), so the sigmoid's slope and offset and
the threshold are refitted on the pooled scores — of clean and injected records together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .latent_fit import SHRINKAGE, Probe, fit_probe, platt, sigmoid
from .spans import SpanPooling, pooled_projection

WHOLE_ANSWER = 1_000_000  # a window longer than any answer: one span, the answer-mean reading
WINDOWS = (4, 8, 16, 32, WHOLE_ANSWER)
TEMPERATURES = (0.0, 0.25, 1.0)  # soft-min temperatures, in units of the clean projections' spread


def answer_means(tokens: Sequence[np.ndarray]) -> np.ndarray:
    """Each answer's mean token state ``(N, H)``: the answer-mean reading at the card's layers."""
    return np.stack([np.asarray(T, dtype=np.float64).mean(axis=0) for T in tokens])


def fit_direction(tokens: Sequence[np.ndarray], y: np.ndarray, g: np.ndarray, method: str) -> Probe:
    """Standardisation and direction on the answers' means (pass clean records only); the
    probe's ``layers`` index the already-averaged features and must be set by the caller."""
    Z = answer_means(tokens)[:, None, :]
    return fit_probe(Z, y, g, [0], method, shrinkage=SHRINKAGE)


def pooled_scores(token_projections: Sequence[np.ndarray], pooling: SpanPooling) -> np.ndarray:
    """``(N,)`` pooled projections from each answer's per-token projections ``(n_i,)``."""
    return np.array([pooled_projection(p, pooling) for p in token_projections])


def candidate_poolings(spread: float) -> list[SpanPooling]:
    """Every window with every temperature (the whole-answer window needs no temperature)."""
    return [SpanPooling(w, round(t * spread, 6)) for w in WINDOWS for t in TEMPERATURES
            if w != WHOLE_ANSWER or t == 0.0]


def span_out_of_fold(tokens: Sequence[np.ndarray], y: np.ndarray, g: np.ndarray, clean: np.ndarray,
                     masks: Sequence[np.ndarray], method: str,
                     poolings: Sequence[SpanPooling]) -> dict[SpanPooling, np.ndarray]:
    """Per pooling, scores ``(N,)`` where each test mask's records are scored by a probe fitted
    on the complement: direction on its clean records, score mapping on all its records."""
    y = np.asarray(y).astype(bool)
    out = {p: np.full(len(y), np.nan) for p in poolings}
    for test in masks:
        train = ~test
        fit_rows = np.flatnonzero(train & clean)
        if not test.any() or len(set(y[fit_rows].tolist())) < 2:
            continue
        probe = fit_direction([tokens[i] for i in fit_rows], y[fit_rows], g[fit_rows], method)
        projections = [probe.project_pooled(T) for T in tokens]
        for pooling in poolings:
            s = pooled_scores(projections, pooling)
            a, b = platt(s[train], y[train])
            out[pooling][test] = sigmoid(a * s[test] + b)
    return out


def pooling_merit(scores: np.ndarray, y: np.ndarray, g: np.ndarray, clean: np.ndarray) -> float:
    """Clean paired accuracy + AUC over all records (clean and injected): the first keeps the
    clean discernment, the second punishes an injected harmful answer scored above an aligned one."""
    from ..discernment import paired_accuracy, roc_auc
    from .latent_fit import paired_scores

    y = np.asarray(y).astype(bool)
    aligned, misaligned = paired_scores(scores[clean], y[clean], g[clean])
    accuracy, _ = paired_accuracy(aligned, misaligned)
    return accuracy + roc_auc(scores.tolist(), [int(v) for v in y])


def choose_pooling(oof: dict[SpanPooling, np.ndarray], y: np.ndarray, g: np.ndarray,
                   clean: np.ndarray) -> tuple[SpanPooling, dict[str, float]]:
    """The window pooling with the best :func:`pooling_merit` (ties: the smaller window, then the
    lower temperature), and every candidate's merit halved, keyed ``"window/temperature"``.

    The whole-answer mean is scored as the reference but never chosen: padding dilutes a mean by
    construction, and the merit only sees the fit half of the injection styles, a few copies per
    answer, so a mean that ties the windows there (as it did once code was in the fit: 0.8904
    against 0.8888 for 32 tokens) would still be fooled by longer padding."""
    merits = {p: pooling_merit(s, y, g, clean) for p, s in oof.items()}
    windows = [p for p in merits if p.window != WHOLE_ANSWER]
    if not windows:
        raise ValueError("no window pooling among the candidates")
    best = max(windows, key=lambda p: (round(merits[p], 9), -p.window, -p.temperature))
    return best, {f"{p.window}/{p.temperature}": round(m / 2, 4) for p, m in merits.items()}


def fit_span_probe(tokens: Sequence[np.ndarray], y: np.ndarray, g: np.ndarray, clean: np.ndarray, method: str,
                   pooling: SpanPooling, layers: Sequence[int]) -> Probe:
    """The card's probe: direction on the clean records' means, score mapping on every
    record's pooled projection; ``layers`` are the hidden states ``tokens`` were averaged over."""
    y = np.asarray(y).astype(bool)
    rows = np.flatnonzero(clean)
    probe = fit_direction([tokens[i] for i in rows], y[rows], g[rows], method)
    s = pooled_scores([probe.project_pooled(T) for T in tokens], pooling)
    a, b = platt(s, y)
    return replace(probe, layers=list(layers), a=a, b=b)
