"""Online pairs with active learning: the policy samples, the frozen copy reviews and rewrites.

One round is one batched :meth:`conscience.conscience.Conscience.step` — the same step that
answers at inference: ``k`` answers per alignment prompt from a sampling copy of the current
policy → the frozen copy's verdicts → for each flagged answer one ethical alternative (written by
the frozen copy or the policy) → its verdict. :func:`conscience.pairs.pairs_from_responses` then
keeps the pairs whose alternative wins by the margin.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from ..conscience import Conscience, Response
from ..errors import ConscienceError
from ..generation import LocalGenerator, Sampling
from ..models import LoadedModel
from ..packing import int8_supported, pack_linears, packing_supported
from ..pairs import PreferencePair, pairs_from_responses
from ..verdict import Reviewer


@dataclass
class OnlineRound:
    """What one sampling round produced, with its timings (seconds)."""

    pairs: list[PreferencePair] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
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
    """The dtype answers are sampled in (``torch.int8``: int8 weights, bfloat16 activations; see
    :mod:`conscience.packing`). ``auto``: the weights' own dtype, except for float32 weights on a
    CPU without oneDNN packing, which decode from a bfloat16 copy (half the weight reads). Where
    packing works, a packed float32 copy decodes a round about as fast as a bf16 one and samples
    exactly what the policy would (``benchmarks/sampling.py``: 1.36× vs 1.25× dense fp32 here)."""
    param = next(model.parameters())
    if requested == "auto":
        if param.dtype == torch.float32 and param.device.type == "cpu" and not packing_supported(torch.float32):
            return torch.bfloat16
        return param.dtype
    return getattr(torch, requested)


def generation_copy(lm: LoadedModel, dtype: torch.dtype, adapter: bool) -> LoadedModel:
    """A detached copy of ``lm`` for generation only: the LoRA adapter merged in (``adapter=True``,
    the policy) or left out (``adapter=False``, the frozen copy), cast to ``dtype``, its linear
    layers packed for CPU decoding where :func:`packing_supported` (``torch.int8``: int8 weights).
    ``lm`` itself when no copy would help (same dtype, nothing to pack: the caller disables an
    adapter with :func:`conscience.models.frozen`). The trained weights are never touched or
    rounded; the copy costs one more model's weights in memory while it lives."""
    model = lm.model
    param = next(model.parameters())
    int8 = dtype == torch.int8
    cast = torch.bfloat16 if int8 else dtype
    on_cpu = param.device.type == "cpu"
    if int8 and not (on_cpu and int8_supported()):
        raise ConscienceError("sample_dtype int8 needs CPU weights and a PyTorch with torch._weight_int8pack_mm")
    pack = on_cpu and (int8 or packing_supported(cast))
    if param.dtype == cast and not pack:
        return lm
    clone = copy.deepcopy(model)
    if hasattr(model, "peft_config"):
        clone = clone.merge_and_unload() if adapter else clone.unload()
    clone = clone.to(cast).eval().requires_grad_(False)
    if pack:
        pack_linears(clone, int8=int8)
    return LoadedModel(clone, lm.tokenizer, lm.spec, lm.identity)


def pick_prompts(pool: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` prompts from the pool, deterministic for ``seed`` (the step number is mixed in)."""
    rng = random.Random(seed)
    return rng.sample(list(pool), n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]


def online_round(
    policy: LoadedModel,
    frozen: LoadedModel,
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
    frozen_writer: LoadedModel | None = None,
    revise: bool = True,
) -> OnlineRound:
    """Sample → review → write alternatives for the flagged → review them → pairs.

    ``frozen`` is the frozen copy (with LoRA the same module as the policy: its adapter is
    disabled while it reviews or writes); ``writer`` picks who writes alternatives.
    ``sample_dtype`` (see :func:`sampling_dtype`) applies to generation only: verdicts are
    always read from the frozen copy's own weights, as its card was fitted. ``frozen_writer`` is the
    frozen copy's generation copy when the caller keeps one across rounds (its weights never
    change); otherwise one is made for this round. A flagged empty answer gets no alternative:
    it could not be a pair's rejected answer. ``revise=False`` reviews the samples and writes no
    alternative (the reward term reads the verdicts alone).
    """
    dtype = sampling_dtype(policy.model, sample_dtype)
    with _sampling(policy.model):
        start = time.perf_counter()
        drafter = LocalGenerator(generation_copy(policy, dtype, adapter=True))
        if writer == "frozen" and revise:
            rewriter = LocalGenerator(frozen_writer or generation_copy(frozen, dtype, adapter=False),
                                      frozen_weights=True)
        else:  # the policy writes, or nothing is written
            rewriter = drafter
        copying = time.perf_counter() - start
        conscience = Conscience(drafter, judge=frozen, reviewer=reviewer, mode=mode, max_rounds=int(revise),
                                rewriter=rewriter)
        step = conscience.step(prompts, Sampling(max_new_tokens, temperature, top_p, seed),
                               Sampling(alt_max_new_tokens, temperature, top_p, seed + 1), k=k, revise_empty=False)
    drafts = [r.draft.verdict for r in step.responses]
    return OnlineRound(
        pairs=pairs_from_responses(step.responses, margin),
        responses=step.responses,
        n_samples=len(drafts),
        n_flagged=sum(v.flagged for v in drafts),
        mean_verdict=sum(v.score for v in drafts) / max(len(drafts), 1),
        seconds_sampling=copying + step.seconds_generating,
        seconds_reviewing=step.seconds_reviewing,
    )
