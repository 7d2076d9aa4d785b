"""Online pairs with active learning: the policy samples, the frozen copy judges and rewrites.

One round: ``k`` answers per alignment prompt from the current policy → the frozen copy's
verdicts → for each flagged answer an ethical alternative (written by the frozen copy or the
policy) → its verdict → :func:`conscience.pairs.build_pairs` keeps the pairs whose alternative
wins by the margin.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from ..framings import load_prompts, mode_settings
from ..generation import generate
from ..models import LoadedModel, frozen
from ..pairs import PreferencePair, build_pairs
from ..verdict import ReviewItem, Reviewer


@dataclass
class OnlineRound:
    """What one sampling round produced, with its timings (seconds)."""

    pairs: list[PreferencePair] = field(default_factory=list)
    n_samples: int = 0
    n_flagged: int = 0
    mean_verdict: float = float("nan")
    seconds_sampling: float = 0.0
    seconds_reviewing: float = 0.0

    @property
    def flagged_share(self) -> float:
        return self.n_flagged / self.n_samples if self.n_samples else float("nan")


@contextlib.contextmanager
def _sampling(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and a private RNG: sampling must not move the training RNG stream, so a run
    with the conscience term sees the same dropout/shuffling randomness as plain SFT."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            yield
    finally:
        model.train(was_training)


def sampling_dtype(model: torch.nn.Module, requested: str) -> torch.dtype:
    """The dtype answers are sampled in. ``auto``: bfloat16 for float32 weights on a CPU, where
    decoding is bound by reading the weights and a half-size copy decodes faster (4 × 48 tokens of
    the bundled model: 7.4 s vs 10.7 s here, one ad-hoc timing); otherwise the weights' own dtype (GPUs train in bf16 already)."""
    param = next(model.parameters())
    if requested == "auto":
        return torch.bfloat16 if param.dtype == torch.float32 and param.device.type == "cpu" else param.dtype
    return getattr(torch, requested)


def generation_copy(lm: LoadedModel, dtype: torch.dtype, adapter: bool) -> LoadedModel:
    """``lm`` itself when it already runs in ``dtype`` (the caller disables a LoRA adapter with
    :func:`frozen` where needed); otherwise a detached copy for generation only: the adapter merged
    in (``adapter=True``, the policy) or left out (``adapter=False``, the frozen copy), cast to
    ``dtype``. The copy lives for one round, so the trained weights are never touched or rounded."""
    model = lm.model
    if next(model.parameters()).dtype == dtype:
        return lm
    clone = copy.deepcopy(model)
    if hasattr(model, "peft_config"):
        clone = clone.merge_and_unload() if adapter else clone.unload()
    return LoadedModel(clone.to(dtype).eval().requires_grad_(False), lm.tokenizer, lm.spec, lm.identity)


def pick_prompts(pool: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` prompts from the pool, deterministic for ``seed`` (the step number is mixed in)."""
    rng = random.Random(seed)
    return rng.sample(list(pool), n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]


def revision_chat(prompt: str, answer: str, mode: str) -> list[dict]:
    """The conversation in which the writer is asked for an ethical alternative."""
    revise = load_prompts()["revise"]
    concern = revise.get("code_concern", "") if mode == "code" else ""
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": revise["user"].format(concern=concern)},
    ]


def _with_system(messages: list[dict], mode: str) -> list[dict]:
    system = mode_settings(mode).get("system")
    return ([{"role": "system", "content": system}] if system else []) + messages


def online_round(
    policy: LoadedModel,
    judge: LoadedModel,
    reviewer: Reviewer,
    prompts: Sequence[str],
    k: int,
    seed: int,
    writer: str = "frozen",
    mode: str = "chat",
    max_new_tokens: int = 48,
    alt_max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    margin: float = 0.1,
    sample_dtype: str = "float32",
) -> OnlineRound:
    """Sample → review → write alternatives for the flagged → review them → pairs.

    ``judge`` is the frozen copy (with LoRA the same module as the policy: its adapter is
    disabled while it judges or writes); ``writer`` picks who writes alternatives.
    ``sample_dtype`` (see :func:`sampling_dtype`) applies to generation only: verdicts are
    always read from the judge's own weights, as its card was fitted.
    """
    result = OnlineRound()
    chats = [_with_system([{"role": "user", "content": p}], mode) for p in prompts for _ in range(k)]
    asked = [p for p in prompts for _ in range(k)]
    dtype = sampling_dtype(policy.model, sample_dtype)
    with _sampling(policy.model):
        t0 = time.perf_counter()
        sampler = generation_copy(policy, dtype, adapter=True)
        samples = generate(sampler, chats, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        t1 = time.perf_counter()
        verdicts = reviewer.review([ReviewItem(p, s.answer, s.reasoning) for p, s in zip(asked, samples)])
        t2 = time.perf_counter()
        result.seconds_sampling += t1 - t0
        result.seconds_reviewing += t2 - t1
        result.n_samples = len(samples)
        result.n_flagged = sum(v.flagged for v in verdicts)
        result.mean_verdict = sum(v.score for v in verdicts) / max(len(verdicts), 1)
        flagged = [i for i, v in enumerate(verdicts) if v.flagged and samples[i].answer.strip()]
        alternatives: list[str | None] = [None] * len(samples)
        alt_verdicts: list = [None] * len(samples)
        if flagged:
            revise = [_with_system(revision_chat(asked[i], samples[i].text, mode), mode) for i in flagged]
            author = generation_copy(judge, dtype, adapter=False) if writer == "frozen" else sampler
            ctx = frozen(author.model) if writer == "frozen" else contextlib.nullcontext()
            with ctx:
                written = generate(author, revise, max_new_tokens=alt_max_new_tokens, temperature=temperature,
                                   top_p=top_p, seed=seed + 1)
            t3 = time.perf_counter()
            reviewed = reviewer.review([ReviewItem(asked[i], w.answer, w.reasoning) for i, w in zip(flagged, written)])
            t4 = time.perf_counter()
            result.seconds_sampling += t3 - t2
            result.seconds_reviewing += t4 - t3
            for i, w, v in zip(flagged, written, reviewed):
                alternatives[i], alt_verdicts[i] = w.answer, v
        result.pairs = build_pairs(asked, [s.answer for s in samples], verdicts, alternatives, alt_verdicts, margin)
    return result
