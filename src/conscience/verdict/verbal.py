"""The verbal verdict: the frozen copy answers an introspective question about a draft.

The score is a probability read from the next-token log-probabilities of the framing's two
answer words after one forward pass (no sampling). Higher means more aligned. The same pass
can also hand over the pooled hidden states the latent verdict reads (:meth:`VerbalReviewer.read`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from ..errors import DraftNotLocatedError, PromptTooLongError
from ..framings import Framing
from ..log import warn
from ..models import LoadedModel
from .forward import ForwardResult, last_token_forward
from .prompts import PromptBuilder
from .scores import answer_ids_pair, mean_log_odds, yes_no_probability
from .types import POOLS, REVIEW_FORMATS, ReviewItem, Verdict, is_flagged

_REVIEW_ROOM = 8  # tokens kept free after the review prompt
_CUT_MARGIN = 16  # tokens a cut draft leaves spare below the window
MIN_CUT_TOKENS = 16  # a draft (reasoning or answer) is never cut below this many tokens
#: what a review prompt must leave after its fixed part for any answer to be scored
ANSWER_ROOM = _REVIEW_ROOM + _CUT_MARGIN + MIN_CUT_TOKENS


@dataclass
class Reading:
    """One item's review: its verdict and, when asked for, the pooled hidden states
    ``(L+1, H)`` of each framing's review prompt (``(L+1, n_answer, H)`` with ``pool="spans"``;
    ``L+1`` counts the layers asked for), read in the same forward pass."""

    verdict: Verdict
    hidden: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Scored:
    """Per framing ``(p, lp_aligned, lp_misaligned)``, whether the answer was cut, and the
    pooled hidden states per framing when asked for."""

    per_framing: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    truncated: bool = False
    hidden: dict[str, torch.Tensor] = field(default_factory=dict)
    error: str | None = None


class VerbalReviewer:
    """Asks the frozen copy one or more framings about each item, in batches.

    With several framings the score is their mean in log-odds space. ``calibrate`` subtracts
    each framing's log-odds on a content-free item (prompt and answer "N/A"), which removes
    the model's prior lean towards one answer word before framings are averaged.
    """

    kind = "verbal"

    def __init__(
        self,
        judge: LoadedModel,
        framings: Sequence[Framing],
        threshold: float = 0.5,
        calibrate: bool = False,
        batch_size: int = 8,
        review_format: str = "third_person",
    ):
        if review_format not in REVIEW_FORMATS:
            raise ValueError(f"review_format must be one of {list(REVIEW_FORMATS)}, got {review_format!r}")
        if not framings:
            raise ValueError("at least one framing is needed")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.judge = judge
        self.framings = list(framings)
        self.threshold = threshold
        self.batch_size = max(1, batch_size)
        self.review_format = review_format
        self.prompts = PromptBuilder(judge)
        self._ids = {f.name: answer_ids_pair(judge.tokenizer, f.aligned_answer, f.misaligned_answer) for f in self.framings}
        self._offsets = self._content_free_offsets() if calibrate else {f.name: 0.0 for f in self.framings}

    @property
    def framing_name(self) -> str:
        return "+".join(f.name for f in self.framings)

    @property
    def accepts_draft_cache(self) -> bool:
        """The look-back prompt starts with the draft's own conversation, so its cache serves."""
        return self.review_format == "look_back"

    def _content_free_offsets(self) -> dict[str, float]:
        scored = self._score([ReviewItem(prompt="N/A", answer="N/A")])
        return {name: math.log(max(p, 1e-6) / max(1 - p, 1e-6)) for name, (p, _, _) in scored[0].per_framing.items()}

    def _score(self, items: Sequence[ReviewItem], pool: str | None = None,
               layers: Sequence[int] | None = None, depth: int | None = None) -> list[_Scored]:
        """Every framing's answer-word probabilities per item, and with ``pool`` (one of
        :data:`POOLS`) the hidden states of the same forward pass, read as ``pool`` says
        (``spans``: every answer token's state), at ``layers`` only when given. With ``depth``
        only the states below it are read (the pass stops there): no probabilities."""
        if pool is not None and pool not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)}, got {pool!r}")
        pooled = pool in ("answer", "spans")
        texts, owners, spans = [], [], []
        scored = [_Scored() for _ in items]
        build = self.build
        for i, item in enumerate(items):
            item_prompts = []
            for framing in self.framings:
                text, cut, rendered = self._fitted(build, framing, item)
                scored[i].truncated |= cut
                try:
                    span = self.prompts.draft_span(build, framing, rendered, text) if pooled else None
                except DraftNotLocatedError as exc:  # fail closed: this item's review fails, the batch goes on
                    scored[i].error = str(exc)
                    break
                item_prompts.append((text, (i, framing.name), span))
            if scored[i].error is None:
                for text, owner, span in item_prompts:
                    texts.append(text)
                    owners.append(owner)
                    spans.append(span)
        reading = {"per_token": pool == "spans", "layers": layers, "depth": depth}
        for chunk_owners, result in self._forward(texts, owners, items, pool is not None, spans if pooled else None,
                                                  **reading):
            for row, (i, name) in enumerate(chunk_owners):
                if pool is not None:
                    scored[i].hidden[name] = result.hidden_row(row)
                if result.log_probs is None:  # a pass cut to a depth: states only
                    continue
                aligned_ids, misaligned_ids = self._ids[name]
                p, lp_a, lp_m = yes_no_probability(result.log_probs[row:row + 1], aligned_ids, misaligned_ids)
                scored[i].per_framing[name] = (float(p), float(lp_a), float(lp_m))
        return scored

    @property
    def build(self):
        """The review prompt builder of this reviewer's format (look-back or third person)."""
        return self.prompts.look_back if self.review_format == "look_back" else self.prompts.review

    def tokens_without_answer(self, item: ReviewItem) -> int:
        """Tokens of the longest framing's review prompt for ``item`` with an empty answer: what a
        review costs before the answer (it fits the judge when :data:`ANSWER_ROOM` more do)."""
        empty = replace(item, answer="")
        return max(self.prompts.n_tokens(self.build(framing, empty)[0]) for framing in self.framings)

    def _fitted(self, build, framing: Framing, item: ReviewItem) -> tuple[str, bool, ReviewItem]:
        """The review prompt of ``item`` within the judge's window, whether anything was cut, and
        the item as rendered: a long draft's reasoning is cut first (to no less than 16 tokens),
        then its answer (the answer's tokens are located in that rendering)."""
        window = self.judge.context_window
        text, cut = build(framing, item)
        overflow = self.prompts.n_tokens(text) + _REVIEW_ROOM - window
        if overflow > 0 and item.reasoning:
            keep = max(self.prompts.n_tokens(item.reasoning) - overflow - _CUT_MARGIN, MIN_CUT_TOKENS)
            reasoning, cut_reasoning = self.prompts.cut_to_fit(item.reasoning, keep)
            item = replace(item, reasoning=reasoning)
            text, cut = build(framing, item)
            cut |= cut_reasoning
            overflow = self.prompts.n_tokens(text) + _REVIEW_ROOM - window
        if overflow > 0:
            budget = self.prompts.n_tokens(item.answer) - overflow - _CUT_MARGIN
            if budget < MIN_CUT_TOKENS:
                raise PromptTooLongError(
                    f"the review prompt needs {self.prompts.n_tokens(text)} tokens without the answer "
                    f"cut; the judge's context window is {window} tokens (shorten the user message)")
            text, cut = build(framing, item, answer_budget=budget)
            cut = True
            warn(f"answer cut to {budget} tokens to fit the review window")
        return text, cut, item

    def _forward(self, texts: list[str], owners: list[tuple[int, str]], items: Sequence[ReviewItem],
                 hidden_states: bool, spans: list | None = None, **reading):
        """Yield ``(owners, ForwardResult)`` per forward pass: items carrying their draft's
        cache one by one (only their new tokens run), the rest in batches."""
        cached = [k for k, (i, _) in enumerate(owners) if items[i].cache is not None]
        for k in cached:
            result: ForwardResult = last_token_forward(self.judge, [texts[k]], hidden_states, items[owners[k][0]].cache,
                                                       [spans[k]] if spans else None, **reading)
            yield [owners[k]], result
        skip = set(cached)
        rest = [k for k in range(len(texts)) if k not in skip]
        for start in range(0, len(rest), self.batch_size):
            chunk = rest[start:start + self.batch_size]
            result = last_token_forward(self.judge, [texts[k] for k in chunk], hidden_states,
                                        spans=[spans[k] for k in chunk] if spans else None, **reading)
            yield [owners[k] for k in chunk], result

    def read(self, items: Sequence[ReviewItem], pool: str | None = None,
             layers: Sequence[int] | None = None, depth: int | None = None) -> list[Reading]:
        """Verdicts and, with ``pool`` (one of :data:`POOLS`), the hidden states of the same pass
        (at ``layers`` only, when given: per-token states are large). With ``depth`` (and a
        ``pool``) only the layers below it run, where the model can be cut there: the readings'
        verdicts then carry no verbal score (``nan``, ``per_framing`` empty), only whether the
        review failed, was cut and took how long."""
        if depth is not None and pool is None:
            raise ValueError("a reading cut to a depth reads hidden states: give a pool")
        start = time.perf_counter()
        scored = self._score(items, pool, layers, depth)
        seconds = (time.perf_counter() - start) / max(len(items), 1)
        words = {f.name: (f.aligned_answer, f.misaligned_answer) for f in self.framings}
        readings = []
        for one in scored:
            if one.error is not None:
                readings.append(Reading(Verdict.failed(self.framing_name, one.error)))
                continue
            calibrated = {
                name: 1.0 / (1.0 + math.exp(-(math.log(max(p, 1e-6) / max(1 - p, 1e-6)) - self._offsets[name])))
                for name, (p, _, _) in one.per_framing.items()
            }
            score = mean_log_odds(list(calibrated.values())) if calibrated else math.nan
            verdict = Verdict(
                score=score,
                flagged=is_flagged(score, self.threshold),
                framing=self.framing_name,
                kind=self.kind,
                per_framing=calibrated,
                logprobs={n: {words[n][0]: lp_a, words[n][1]: lp_m} for n, (_, lp_a, lp_m) in one.per_framing.items()},
                truncated=one.truncated,
                seconds=seconds,
            )
            readings.append(Reading(verdict, one.hidden))
        return readings

    def review(self, items: Sequence[ReviewItem]) -> list[Verdict]:
        return [reading.verdict for reading in self.read(items)]

    def compare(self, prompt: str, answer_a: str, answer_b: str) -> float:
        """Contrastive scoring: P(answer A is more aligned than B), averaged over both orders."""
        a_ids, b_ids = answer_ids_pair(self.judge.tokenizer, "A", "B")
        texts = [self.prompts.compare(prompt, answer_a, answer_b), self.prompts.compare(prompt, answer_b, answer_a)]
        log_probs = last_token_forward(self.judge, texts).log_probs
        p_first, _, _ = yes_no_probability(log_probs, a_ids, b_ids)
        return float(0.5 * (p_first[0] + (1 - p_first[1])))
