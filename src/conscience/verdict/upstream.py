"""The verbal verdict asked of an OpenAI-compatible server through its top log-probs.

The server is sent the same review prompt :class:`~conscience.verdict.prompts.PromptBuilder`
builds — as chat messages — with ``max_tokens=1, logprobs=true, top_logprobs=K``, and the
verdict is read from the top log-probs of the framing's two answer words.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, Sequence

import torch

from ..framings import Framing
from ..openai_client import EndpointError, first_top_logprobs, logprob_table
from .prompts import MessageRendering, PromptBuilder
from .scores import mean_log_odds
from .types import ReviewItem, Verdict, is_flagged

# Special-token spellings of common chat templates, neutralised inside quoted text sent upstream
# (the upstream's tokenizer is unknown here).
UPSTREAM_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
                     "<|end_header_id|>", "<|begin_of_text|>", "<s>", "</s>", "[INST]", "[/INST]",
                     "<start_of_turn>", "<end_of_turn>")


class UpstreamError(EndpointError):
    """The upstream server failed or answered something unusable."""


class ChatCompletions(Protocol):
    """An OpenAI-compatible ``/chat/completions`` endpoint: the response body as a dict."""

    def chat(self, messages: list[dict], **params) -> dict: ...


def _side(token: str, aligned: str, misaligned: str) -> str | None:
    """Which answer word a generated token starts: 'a', 'm' or None (neither, or both)."""
    t = token.strip().lower()
    if not t:
        return None

    def starts(word: str) -> bool:
        w = word.strip().lower()
        return w.startswith(t) or (t.startswith(w) and not t[len(w):].isalpha())

    a, m = starts(aligned), starts(misaligned)
    return "a" if a and not m else "m" if m and not a else None


def verdict_from_top_logprobs(top: Sequence[dict], aligned: str, misaligned: str) -> tuple[float, float, float]:
    """P(aligned) renormalised over the two answer words, from one position's top log-probs.

    Tokens that start an answer word (any casing, leading space) are summed per word. Both
    words must be listed: a missing word's log-prob is only bounded by the smallest listed one,
    and a bound is not a verdict (with "No" alone and last, the bound gave exactly 0.5 and
    released the draft), so it raises and the review counts as failed (fail-closed). Returns
    ``(p_aligned, logp_aligned, logp_misaligned)``.
    """
    sides: dict[str, list[float]] = {"a": [], "m": []}
    for token, lp in logprob_table(top).items():
        side = _side(token, aligned, misaligned)
        if side:
            sides[side].append(lp)
    missing = [word for word, side in ((aligned, "a"), (misaligned, "m")) if not sides[side]]
    if missing:
        raise UpstreamError(f"{' and '.join(repr(w) for w in missing)} not among the upstream's {len(top)} "
                            f"top log-probs: no verdict")
    lp_a = float(torch.logsumexp(torch.tensor(sides["a"]), 0))
    lp_m = float(torch.logsumexp(torch.tensor(sides["m"]), 0))
    if not (math.isfinite(lp_a) and math.isfinite(lp_m)):
        raise UpstreamError("the upstream's top log-probs are not finite numbers: no verdict")
    return 1.0 / (1.0 + math.exp(lp_m - lp_a)), lp_a, lp_m


class UpstreamReviewer:
    """The verbal verdict, asked of an upstream server through its log-probs (third-person
    review prompt; the upstream holds the model, so no draft cache is reused)."""

    kind = "upstream"
    review_format = "third_person"
    accepts_draft_cache = False

    def __init__(self, client: ChatCompletions, framings: Sequence[Framing], threshold: float = 0.5,
                 top_logprobs: int = 20, workers: int = 8):
        if not framings:
            raise ValueError("at least one framing is needed")
        self.client, self.framings, self.threshold, self.top = client, list(framings), threshold, top_logprobs
        self.prompts = PromptBuilder(None, rendering=MessageRendering(), specials=UPSTREAM_SPECIALS)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upstream-review")

    @property
    def framing_name(self) -> str:
        return "+".join(f.name for f in self.framings)

    def _ask(self, framing: Framing, item: ReviewItem) -> tuple[float, float, float]:
        messages, _ = self.prompts.review(framing, item)
        body = self.client.chat(messages, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=self.top)
        top = first_top_logprobs(body)
        if not top:
            raise UpstreamError("the upstream returned no top log-probs (does it support logprobs=true?)")
        return verdict_from_top_logprobs(top, framing.aligned_answer, framing.misaligned_answer)

    def review(self, items: Sequence[ReviewItem]) -> list[Verdict]:
        start = time.perf_counter()
        jobs = [(i, f) for i in range(len(items)) for f in self.framings]
        if len(jobs) == 1:  # one item, one framing: asked in the caller's thread, never queued in the pool
            results = [self._ask(jobs[0][1], items[0])]
        else:
            results = list(self.pool.map(lambda job: self._ask(job[1], items[job[0]]), jobs))
        seconds = (time.perf_counter() - start) / max(len(items), 1)
        per_item: list[dict] = [{} for _ in items]
        for (i, framing), result in zip(jobs, results, strict=True):
            per_item[i][framing.name] = (framing, result)
        verdicts = []
        for per in per_item:
            score = mean_log_odds([p for _, (p, _, _) in per.values()])
            verdicts.append(Verdict(
                score=score, flagged=is_flagged(score, self.threshold), framing=self.framing_name, kind=self.kind,
                per_framing={n: p for n, (_, (p, _, _)) in per.items()},
                logprobs={n: {f.aligned_answer: a, f.misaligned_answer: m} for n, (f, (_, a, m)) in per.items()},
                seconds=seconds,
            ))
        return verdicts
