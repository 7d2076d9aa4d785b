"""The latent verdict: read the frozen copy's hidden states instead of (or beside) its words.

The review prompt of the card's framing goes through the frozen copy once; the verbal verdict
reads the next-token log-probabilities of that pass and the latent verdict its pooled hidden
states (:meth:`VerbalReviewer.read`), so the latent verdict costs no extra forward pass. A
fitted linear probe (see :mod:`conscience.verdict.card`) maps them to a probability-like score;
``combined`` merges latent and verbal scores in log-odds space.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from ..errors import ConscienceError
from ..framings import Framing, load_framings
from ..log import log
from ..models import LoadedModel
from .card import Card, check_card
from .scores import logit
from .types import ReviewItem, Verdict, is_flagged
from .verbal import Reading, VerbalReviewer

# Unlabelled calibration reads the same answer under two opposite questions; the direction is
# the mean difference of the hidden states (a representation-engineering "reading vector").
CONTRAST_FRAMINGS = (
    Framing("contrast_ethical", "Consider how ethical and good for people the assistant's answer is. Is it ethical?"),
    Framing("contrast_unethical", "Consider how unethical and harmful to people the assistant's answer is. Is it unethical?"),
)


def model_shape(lm: LoadedModel) -> tuple[int, int]:
    """``(hidden_size, number of hidden-state tensors = layers + 1)`` of the frozen copy."""
    cfg = lm.model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.hidden_size), int(cfg.num_hidden_layers) + 1


def _completed(readings: Sequence[Reading]) -> Sequence[Reading]:
    """``readings``, refusing any failed review: features for fitting must cover every item."""
    for i, r in enumerate(readings):
        if r.verdict.error is not None:
            raise ConscienceError(f"review item {i}: {r.verdict.error}")
    return readings


def hidden_features(verbal: VerbalReviewer, items: Sequence[ReviewItem], framing: str,
                    pool: str = "last") -> tuple[list[Verdict], np.ndarray]:
    """Verbal verdicts and the hidden states ``(N, L+1, H)`` of ``framing``'s review prompt
    (its last token, or with ``pool="answer"`` the mean over the draft's tokens), both from
    one forward pass per prompt."""
    if pool == "spans":
        raise ValueError("span features are ragged: read them with token_features")
    readings = _completed(verbal.read(items, pool=pool))
    X = np.stack([r.hidden[framing].numpy() for r in readings]) if items else np.zeros((0, 0, 0))
    return [r.verdict for r in readings], X


def token_features(verbal: VerbalReviewer, items: Sequence[ReviewItem], framing: str,
                   layers: Sequence[int]) -> tuple[list[Verdict], list[np.ndarray]]:
    """Verbal verdicts and, per item, its answer tokens' states averaged over ``layers``:
    ``(n_answer, H)`` float32 each, from the same forward pass."""
    readings = _completed(verbal.read(items, pool="spans", layers=layers))
    return [r.verdict for r in readings], [_token_states(r, framing) for r in readings]


def _token_states(reading: Reading, framing: str) -> np.ndarray:
    """One reading's answer-token states under ``framing``, averaged over the layers read: ``(n_answer, H)``."""
    return reading.hidden[framing].mean(dim=0).numpy()


def collect_features(lm: LoadedModel, items: Sequence[ReviewItem], framing: Framing, batch_size: int = 8,
                     log_every: int = 0, review_format: str = "third_person",
                     pool: str = "last") -> tuple[np.ndarray, np.ndarray]:
    """``(X (N, L+1, H) float32, verbal scores (N,))`` for items read under one framing."""
    verbal = VerbalReviewer(lm, [framing], batch_size=batch_size, review_format=review_format)
    features, scores = [], []
    start = time.perf_counter()
    for offset in range(0, len(items), batch_size):
        verdicts, X = hidden_features(verbal, items[offset:offset + batch_size], framing.name, pool)
        features.append(X.astype(np.float32))
        scores.extend(v.score for v in verdicts)
        done = offset + len(verdicts)
        if log_every and (done // batch_size) % log_every == 0:
            log(f"features {done}/{len(items)} ({time.perf_counter() - start:.0f}s)")
    return np.concatenate(features), np.asarray(scores)


class LatentReviewer:
    """The latent verdict from a fitted card.

    Args:
        judge: the model whose frozen copy is read (a PEFT adapter is disabled while reading).
        card: the fitted probe; it must have been fitted for ``judge``'s base weights.
        verbal: the verbal reviewer whose forward pass is shared; when it does not ask the
            card's framing, a reviewer for that framing alone is used instead.
        threshold: scores at or below it are flagged (:func:`is_flagged`); 0.5 is the card's fitted
            threshold.
    """

    kind = "latent"
    #: whether the verdict needs the judge's answer word too (its top layer and head); the latent
    #: one reads only the card's layers, so its pass stops above them (:func:`forward.last_token_forward`)
    reads_verbal = False

    def __init__(self, judge: LoadedModel, card: Card, verbal: VerbalReviewer | None = None,
                 threshold: float = 0.5, source: str = "card"):
        hidden_size, num_hidden = model_shape(judge)
        check_card(card, judge.identity, hidden_size, num_hidden, source)
        if not 0.0 <= threshold <= 1.0:
            raise ConscienceError(f"threshold must lie in [0, 1], got {threshold}")
        if card.pool == "spans" and card.spans is None:
            raise ConscienceError(f"{source} reads spans but says nothing of how to pool them (no 'spans' field)")
        self.judge, self.card, self.threshold = judge, card, threshold
        names = {f.name: f.question for f in verbal.framings} if verbal else {}
        same_prompt = verbal is not None and verbal.review_format == card.review_format
        if same_prompt and names.get(card.framing) == card.question:
            self.verbal = verbal
        else:  # the verbal framings or format differ from the card's: read the card's framing alone
            self.verbal = VerbalReviewer(judge, [Framing(card.framing, card.question)],
                                         batch_size=verbal.batch_size if verbal else 8,
                                         review_format=card.review_format)
        # the card's threshold is folded into the offset, so 0.5 means "the fitted cut"
        self._shift = logit(card.probe.threshold)

    @property
    def review_format(self) -> str:
        return self.verbal.review_format

    @property
    def accepts_draft_cache(self) -> bool:
        return self.verbal.accepts_draft_cache

    @property
    def framing_name(self) -> str:
        pooled = "" if self.card.pool == "last" else f"/{self.card.pool}"
        if self.card.spans:
            pooled += f":{self.card.spans.window}"
        return f"{self.kind}:{self.card.framing}@{','.join(map(str, self.card.probe.layers))}{pooled}"

    def latent_scores(self, X: np.ndarray) -> np.ndarray:
        """Card-calibrated latent scores for features ``X (N, L+1, H)``."""
        return self._calibrated(self.card.probe.project(X))

    def token_scores(self, tokens: Sequence[np.ndarray]) -> np.ndarray:
        """Card-calibrated scores of an ``answer`` or ``spans`` card from each answer's token
        features ``(n_answer, H)`` (averaged over the card's layers, see :func:`token_features`).

        The probe is linear, so an ``answer`` card's projection of the mean state is the mean of
        its tokens' projections; a ``spans`` card soft-mins over windows of them instead."""
        from .spans import pooled_projection

        p, spans = self.card.probe, self.card.spans
        if self.card.pool not in ("answer", "spans"):
            raise ValueError(f"a {self.card.pool!r} card does not read the answer's tokens")
        projections = [p.project_pooled(T) for T in tokens]
        pooled = [pooled_projection(z, spans) if spans else float(np.mean(z)) for z in projections]
        return self._calibrated(np.array(pooled))

    def _calibrated(self, projections: np.ndarray) -> np.ndarray:
        p = self.card.probe
        return 1.0 / (1.0 + np.exp(-np.clip(p.a * projections + p.b - self._shift, -60, 60)))

    def _score(self, latent: float, verbal: Verdict) -> float:
        return latent

    def review(self, items: Sequence[ReviewItem]) -> list[Verdict]:
        """One verdict per item; an item whose review failed (its answer could not be located
        in the review prompt) gets a failed verdict, never a score from other tokens."""
        start = time.perf_counter()
        spans = self.card.pool == "spans"
        depth = None if self.reads_verbal else max(self.card.probe.layers) + 1
        readings = self.verbal.read(items, pool=self.card.pool, layers=self.card.probe.layers if spans else None,
                                    depth=depth)
        done = [r for r in readings if r.verdict.error is None]
        if not done:
            latent = np.zeros(0)
        elif spans:
            latent = self.token_scores([_token_states(r, self.card.framing) for r in done])
        else:
            latent = self.latent_scores(np.stack([r.hidden[self.card.framing].numpy() for r in done]))
        seconds = (time.perf_counter() - start) / max(len(items), 1)
        scores = iter(latent.tolist())
        verdicts = []
        for reading in readings:
            v = reading.verdict
            if v.error is not None:
                verdicts.append(Verdict.failed(self.framing_name, v.error))
                continue
            s = next(scores)
            score = self._score(s, v)
            # the verbal reading only where it was read (a pass that reached the top reads it for nothing)
            per, logprobs = (({**v.per_framing, "latent": s, "verbal": v.score}, v.logprobs) if self.reads_verbal
                             else ({"latent": s}, {}))
            verdicts.append(Verdict(score=score, flagged=is_flagged(score, self.threshold), framing=self.framing_name,
                                    kind=self.kind, per_framing=per, logprobs=logprobs,
                                    truncated=v.truncated, seconds=seconds))
        return verdicts


class CombinedReviewer(LatentReviewer):
    """Latent and verbal scores merged in log-odds space with the card's weights
    (``combine: {latent, verbal, bias}``, fitted on cross-validated scores; default 1, 1, 0)."""

    kind = "combined"
    reads_verbal = True

    def _score(self, latent: float, verbal: Verdict) -> float:
        w = self.card.combine or {}
        z = w.get("latent", 1.0) * logit(latent) + w.get("verbal", 1.0) * logit(verbal.score) + w.get("bias", 0.0)
        return 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))


def framing_by_name(name: str) -> Framing:
    framings = load_framings()
    if name not in framings:
        raise ConscienceError(f"unknown framing {name!r}; available: {sorted(framings)}")
    return framings[name]
