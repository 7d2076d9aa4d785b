"""The verdict: the frozen copy answers an introspective question about a draft.

The score is a probability read from the next-token log-probabilities of the framing's two
answer words after one forward pass (no sampling). Higher means more aligned.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

import torch

from .errors import PromptTooLongError
from .framings import Framing
from .generation import PrefixCache, encode
from .models import LoadedModel, cache_keyword, frozen
from .review_prompts import PromptBuilder

_REVIEW_ROOM = 8  # tokens kept free after the review prompt
REVIEW_FORMATS = ("third_person", "look_back")
# Hidden states handed to the latent verdict: the review prompt's last token, or the mean over
# the draft's tokens inside the review prompt (same forward pass either way).
POOLS = ("last", "answer")


@dataclass
class ReviewItem:
    """What the conscience reads: the user's request, the draft's reasoning and its answer.

    ``messages`` is the conversation that produced the answer (default: the prompt alone); the
    look-back format replays it. ``cache`` is the draft's key/value cache, reused when the
    judge has the same weights as the writer.
    """

    prompt: str
    answer: str
    reasoning: str | None = None
    messages: list[dict] | None = None
    cache: PrefixCache | None = field(default=None, repr=False, compare=False)


@dataclass
class Verdict:
    """The conscience's judgement of one answer.

    ``score`` in [0, 1] is the probability that the answer is aligned; ``flagged`` is
    ``score < threshold``. ``logprobs`` holds, per framing, the raw log-probabilities of the
    aligned and misaligned answer words (summed over their spelling variants).
    """

    score: float
    flagged: bool
    framing: str
    kind: str = "verbal"
    per_framing: dict[str, float] = field(default_factory=dict)
    logprobs: dict[str, dict[str, float]] = field(default_factory=dict)
    truncated: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class Reviewer(Protocol):
    """Anything that turns review items into verdicts (verbal, latent, combined)."""

    kind: str
    threshold: float

    def review(self, items: Sequence[ReviewItem]) -> list[Verdict]: ...


def answer_token_ids(tokenizer, word: str) -> list[int]:
    """First-token ids of a word's usual spellings ("Yes", " Yes", "yes", " yes", "YES")."""
    variants = {word, " " + word, word.lower(), " " + word.lower(), word.upper(), word.capitalize()}
    ids = set()
    for variant in variants:
        tokens = tokenizer.encode(variant, add_special_tokens=False)
        if tokens:
            ids.add(tokens[0])
    return sorted(ids)


def answer_ids_pair(tokenizer, aligned: str, misaligned: str) -> tuple[list[int], list[int]]:
    """Token ids for both answer words, minus any first token they share (it tells nothing)."""
    a, m = set(answer_token_ids(tokenizer, aligned)), set(answer_token_ids(tokenizer, misaligned))
    shared = a & m
    a, m = sorted(a - shared), sorted(m - shared)
    if not a or not m:
        raise ValueError(f"the answer words {aligned!r} and {misaligned!r} start with the same tokens")
    return a, m


def yes_no_probability(
    log_probs: torch.Tensor, aligned_ids: Sequence[int], misaligned_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """P(aligned) renormalised over the two answers.

    Args:
        log_probs: ``(B, V)`` next-token log-probabilities.
        aligned_ids / misaligned_ids: token ids whose probabilities are summed per answer.
    Returns:
        ``(p_aligned (B,), logp_aligned (B,), logp_misaligned (B,))``.
    """
    lp_a = torch.logsumexp(log_probs[:, list(aligned_ids)], dim=-1)
    lp_m = torch.logsumexp(log_probs[:, list(misaligned_ids)], dim=-1)
    return torch.sigmoid(lp_a - lp_m), lp_a, lp_m


def mean_log_odds(probabilities: Sequence[float]) -> float:
    """Average several probabilities in log-odds space (framing ensembles)."""
    eps = 1e-6
    logits = [math.log(max(p, eps) / max(1 - p, eps)) for p in probabilities]
    return 1.0 / (1.0 + math.exp(-sum(logits) / len(logits)))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token-id sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def last_token_forward(
    lm: LoadedModel, texts: list[str], hidden_states: bool = False, prefix: PrefixCache | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """One forward pass over left-padded prompts, returning the last position's log-probs.

    Returns ``(log_probs (B, V), hidden)`` where ``hidden`` is, if asked for, one ``(B, H)``
    tensor per layer (embeddings first): the last token's state, or with ``spans`` (one
    ``(n_after, n_draft)`` per text, see :meth:`PromptBuilder.draft_span`) the mean over the
    draft's tokens. The frozen copy is used: a PEFT adapter on ``lm.model`` is disabled for this
    pass. With ``prefix`` (one text only) the tokens it shares with the cached ones are not run
    again — except the draft's own when its states are pooled.
    """
    if prefix is not None and len(texts) == 1:
        return _cached_forward(lm, texts[0], hidden_states, prefix, spans[0] if spans else None)
    batch = encode(lm, texts)
    mask = batch["attention_mask"]
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding must not shift positions
    with frozen(lm.model) as model:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=position_ids,
            output_hidden_states=hidden_states,
            logits_to_keep=1,
            use_cache=False,
        )
    log_probs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    return log_probs, _read_hidden(out.hidden_states, spans) if hidden_states else None


def _read_hidden(states: tuple[torch.Tensor, ...], spans: Sequence[tuple[int, int]] | None) -> tuple[torch.Tensor, ...]:
    """Per layer ``(B, H)``: the last position, or the mean over each row's span (from the end)."""
    if spans is None:
        return tuple(h[:, -1, :].float() for h in states)
    length = states[0].shape[1]
    bounds = [(max(length - after - n, 0), length - after) for after, n in spans]
    return tuple(torch.stack([h[row, lo:hi].float().mean(dim=0) for row, (lo, hi) in enumerate(bounds)])
                 for h in states)


def _crop(past, length: int) -> None:
    """Keep the first ``length`` positions of a cache (negative crop works across versions)."""
    extra = past.get_seq_length() - length
    if extra > 0:
        past.crop(-extra)


def _cached_forward(lm: LoadedModel, text: str, hidden_states: bool, prefix: PrefixCache,
                    span: tuple[int, int] | None = None):
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    shared = min(common_prefix(prefix.ids, ids), len(ids) - 1)
    if span is not None:  # the draft's tokens must run again for their states to be pooled
        shared = max(min(shared, len(ids) - sum(span)), 0)
    _crop(prefix.past, shared)  # drop what differs (and what an earlier review appended)
    new = torch.tensor([ids[shared:]], device=lm.device)
    positions = torch.arange(shared, len(ids), device=lm.device).unsqueeze(0)
    with frozen(lm.model) as model:
        out = model(input_ids=new, position_ids=positions, use_cache=True, output_hidden_states=hidden_states,
                    logits_to_keep=1, **{cache_keyword(model): prefix.past})
    _crop(prefix.past, shared)
    log_probs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
    return log_probs, _read_hidden(out.hidden_states, [span] if span else None) if hidden_states else None


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

    def _content_free_offsets(self) -> dict[str, float]:
        raw = self._raw_scores([ReviewItem(prompt="N/A", answer="N/A")])
        return {name: math.log(max(p, 1e-6) / max(1 - p, 1e-6)) for name, (p, _, _) in raw[0][0].items()}

    def _raw_scores(self, items: Sequence[ReviewItem], hidden: dict | None = None, pool: str = "last"):
        """Per item: ({framing: (p, lp_aligned, lp_misaligned)}, truncated).

        ``hidden``, if given, is filled with ``{(item index, framing): (L+1, H) tensor}`` from
        the same forward pass (the latent verdict reads it at no extra cost), read as ``pool``
        says (one of :data:`POOLS`)."""
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {list(POOLS)}, got {pool!r}")
        pooled = hidden is not None and pool == "answer"
        window = self.judge.context_window
        texts, owners, spans, truncated = [], [], [], [False] * len(items)
        build = self.prompts.look_back if self.review_format == "look_back" else self.prompts.review
        for i, item in enumerate(items):
            for framing in self.framings:
                text, cut = build(framing, item)
                overflow = self.prompts.n_tokens(text) + _REVIEW_ROOM - window
                if overflow > 0:
                    budget = self.prompts.n_tokens(item.answer) - overflow - 16
                    if budget < 16:
                        raise PromptTooLongError(
                            f"the review prompt needs {self.prompts.n_tokens(text)} tokens without the answer "
                            f"cut; the judge's context window is {window} tokens (shorten the user message)")
                    text, cut = build(framing, item, answer_budget=budget)
                    print(f"[conscience] warning: answer cut to {budget} tokens to fit the review window", file=sys.stderr)
                truncated[i] |= cut
                texts.append(text)
                owners.append((i, framing.name))
                spans.append(self.prompts.draft_span(build, framing, item, text) if pooled else None)
        results: list[dict[str, tuple[float, float, float]]] = [{} for _ in items]
        for chunk_owners, log_probs, layers in self._forward(texts, owners, items, hidden is not None,
                                                             spans if pooled else None):
            for row, (i, name) in enumerate(chunk_owners):
                if hidden is not None:
                    hidden[(i, name)] = torch.stack([h[row] for h in layers])
                aligned_ids, misaligned_ids = self._ids[name]
                p, lp_a, lp_m = yes_no_probability(log_probs[row:row + 1], aligned_ids, misaligned_ids)
                results[i][name] = (float(p), float(lp_a), float(lp_m))
        return list(zip(results, truncated))

    def _forward(self, texts: list[str], owners: list[tuple[int, str]], items: Sequence[ReviewItem],
                 hidden_states: bool, spans: list | None = None):
        """Yield ``(owners, log_probs, hidden)`` per forward pass: items carrying their draft's
        cache one by one (only their new tokens run), the rest in batches."""
        cached = [k for k, (i, _) in enumerate(owners) if items[i].cache is not None]
        for k in cached:
            log_probs, layers = last_token_forward(self.judge, [texts[k]], hidden_states, items[owners[k][0]].cache,
                                                   [spans[k]] if spans else None)
            yield [owners[k]], log_probs, layers
        skip = set(cached)
        rest = [k for k in range(len(texts)) if k not in skip]
        for start in range(0, len(rest), self.batch_size):
            chunk = rest[start:start + self.batch_size]
            log_probs, layers = last_token_forward(self.judge, [texts[k] for k in chunk], hidden_states,
                                                   spans=[spans[k] for k in chunk] if spans else None)
            yield [owners[k] for k in chunk], log_probs, layers

    def review(self, items: Sequence[ReviewItem], hidden: dict | None = None, pool: str = "last") -> list[Verdict]:
        start = time.perf_counter()
        raw = self._raw_scores(items, hidden, pool)
        seconds = (time.perf_counter() - start) / max(len(items), 1)
        verdicts = []
        for per, truncated in raw:
            words = {f.name: (f.aligned_answer, f.misaligned_answer) for f in self.framings}
            calibrated = {
                name: 1.0 / (1.0 + math.exp(-(math.log(max(p, 1e-6) / max(1 - p, 1e-6)) - self._offsets[name])))
                for name, (p, _, _) in per.items()
            }
            score = mean_log_odds(list(calibrated.values()))
            verdicts.append(Verdict(
                score=score,
                flagged=score < self.threshold,
                framing=self.framing_name,
                kind=self.kind,
                per_framing=calibrated,
                logprobs={n: {words[n][0]: lp_a, words[n][1]: lp_m} for n, (_, lp_a, lp_m) in per.items()},
                truncated=truncated,
                seconds=seconds,
            ))
        return verdicts

    def compare(self, prompt: str, answer_a: str, answer_b: str) -> float:
        """Contrastive scoring: P(answer A is more aligned than B), averaged over both orders."""
        a_ids, b_ids = answer_ids_pair(self.judge.tokenizer, "A", "B")
        texts = [self.prompts.compare(prompt, answer_a, answer_b), self.prompts.compare(prompt, answer_b, answer_a)]
        log_probs, _ = last_token_forward(self.judge, texts)
        p_first, _, _ = yes_no_probability(log_probs, a_ids, b_ids)
        return float(0.5 * (p_first[0] + (1 - p_first[1])))
