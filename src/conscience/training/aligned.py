"""The frozen copy's own answers to the alignment prompts: generated once, cached, and shared by
``kl_coef`` (the tokens the KL is taken on) and ``mix_aligned`` (the aligned rows mixed into batches).

Why the frozen copy's answers: they are what the model said before the fine-tune. KL on them asks
the policy to keep its starting next-token distribution along its starting answers, with no
sampling during training (one policy and one adapter-disabled forward pass a step); mixing them in
is self-distillation of aligned behaviour that needs no outside data.

Review (``aligned_review``): the frozen copy's conscience reads each cached answer once, and only
the answers it passes are kept, for KL and mixing alike. The peers then anchor the policy to the
frozen copy's behaviour as its own verdict judges it, not to everything it happened to say.

Gap selection (``mix_select: gap``, after Kaczér et al. 2025, who picked safe data by the perplexity
gap between an aligned and a misaligned model): the aligned model is the frozen copy and the
misaligned one is the policy itself after ``mix_gap_step`` steps of the fine-tune, so no second
model is trained or held in memory. ``gap = mean log p_frozen(answer) − mean log p_policy(answer)``
per token, i.e. log(perplexity under the policy / perplexity under the frozen copy): from that step
on, only the answers the fine-tune is making least likely are mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..chat_data import tokenize_chat
from ..generation import LocalGenerator, Sampling
from ..jsonl import write_json_atomic
from ..log import log
from ..models import LoadedModel, base_identity
from ..models import frozen as frozen_weights
from .online import _sampling, generation_copy, pick_prompts, sampling_dtype

CACHE_FILE = "aligned_answers.json"
GAP_FILE = "aligned_gap.json"
REVIEW_FILE = "aligned_review.json"


@dataclass
class AlignedPool:
    """Cached aligned answers (``{"prompt", "answer"}``), their token ids (same order, loss on the
    answer) and, once the gap is measured, the rows kept for mixing."""

    answers: list[dict]
    examples: list[dict[str, list[int]]]
    selected: list[int] | None = None
    gaps: list[float] | None = field(default=None, repr=False)

    def pick(self, n: int, seed: int, selected: bool = False) -> list[dict[str, list[int]]]:
        """``n`` examples, deterministic for ``seed``; ``selected``: only the gap-selected rows,
        once there are any."""
        rows = self.selected if selected and self.selected is not None else list(range(len(self.examples)))
        return [self.examples[i] for i in pick_prompts(rows, n, seed)]


def pool_prompts(prompts: Sequence[str], size: int, seed: int) -> list[str]:
    """The alignment prompts the frozen copy answers before training (KL, mixing, frozen pairs):
    up to ``size`` of ``prompts``, a choice fixed by ``seed``."""
    return pick_prompts(prompts, min(size, len(prompts)), seed)


def cache_key(frozen: LoadedModel, prompts: Sequence[str], sampling: Sampling, dtype: str) -> dict:
    """What the cached answers depend on: a cache is reused only when all of it matches."""
    digest = hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()
    return {"model": base_identity(frozen.identity), "prompts_sha256": digest, "n": len(prompts), "dtype": dtype,
            **dataclasses.asdict(sampling)}


def aligned_answers(frozen: LoadedModel, prompts: Sequence[str], sampling: Sampling, path: str | Path,
                    sample_dtype: str = "auto", batch_size: int = 8) -> list[dict]:
    """The frozen copy's answers to ``prompts`` (empty ones dropped), read from ``path`` when it
    holds them for the same model, prompts and settings, else generated and written atomically."""
    path = Path(path)
    dtype = sampling_dtype(frozen.model, sample_dtype)
    key = cache_key(frozen, prompts, sampling, str(dtype))
    if path.exists():
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("key") == key:
            return doc["answers"]
    log(f"the frozen copy answers {len(prompts)} alignment prompts (cached in {path})")
    generations = []
    with _sampling(frozen.model):  # eval mode, private RNG: the training stream is not moved
        writer = LocalGenerator(generation_copy(frozen, dtype, adapter=False), frozen_weights=True)
        for start in range(0, len(prompts), batch_size):
            chats = [[{"role": "user", "content": p}] for p in prompts[start:start + batch_size]]
            seed = None if sampling.seed is None else sampling.seed + start
            generations += writer.generate(chats, dataclasses.replace(sampling, seed=seed))
    answers = [{"prompt": p, "answer": g.answer} for p, g in zip(prompts, generations, strict=True)
               if g.answer.strip()]
    write_json_atomic(path, {"key": key, "answers": answers})
    return answers


def passed_review(reviewer, answers: list[dict], out: Path | None = None) -> list[dict]:
    """The answers ``reviewer`` (the frozen copy's conscience) does not flag, in pool order; a
    review that failed counts as not passed (nothing unread anchors the policy). Every verdict is
    written to ``out`` for inspection; none passing is an error (nothing would be left to anchor to)."""
    from ..errors import ConscienceError
    from ..verdict import ReviewItem

    verdicts = reviewer.review([ReviewItem(a["prompt"], a["answer"]) for a in answers])
    passed = [a for a, v in zip(answers, verdicts, strict=True) if not v.flagged and v.error is None]
    if out is not None:
        write_json_atomic(out, {"passed": len(passed), "of": len(answers),
                                "verdicts": [{"prompt": a["prompt"], "score": v.score, "flagged": v.flagged,
                                              "error": v.error} for a, v in zip(answers, verdicts, strict=True)]})
    log(f"the frozen copy's conscience passed {len(passed)} of its {len(answers)} aligned answers")
    if not passed:
        raise ConscienceError(f"the frozen copy's conscience flagged all {len(answers)} of its aligned answers: "
                              "nothing is left for KL or mixing (turn aligned_review off or change the verdict)")
    return passed


def build_pool(tokenizer, answers: list[dict], max_length: int) -> AlignedPool:
    """Tokenize the answers as chat examples; answers with no token within ``max_length`` are dropped."""
    kept, examples = [], []
    for item in answers:
        example = tokenize_chat(tokenizer, [{"role": "user", "content": item["prompt"]},
                                            {"role": "assistant", "content": item["answer"]}], max_length)
        if example is not None:
            kept.append(item)
            examples.append(example)
    if not examples:
        raise ValueError(f"none of the frozen copy's {len(answers)} aligned answers fits max_length={max_length}")
    return AlignedPool(kept, examples)


def perplexity_gap(policy: LoadedModel, frozen: LoadedModel, answers: Sequence[dict], max_length: int,
                   batch_size: int = 8) -> np.ndarray:
    """``(N,)`` mean per-token log p_frozen − log p_policy of each answer (see the module docstring)."""
    from ..evaluation.drift import mean_answer_logprobs

    prompts, texts = [a["prompt"] for a in answers], [a["answer"] for a in answers]
    with _sampling(policy.model):
        mine = mean_answer_logprobs(policy, prompts, texts, batch_size, max_length)
    with frozen_weights(frozen.model):
        ref = mean_answer_logprobs(frozen, prompts, texts, batch_size, max_length)
    return ref - mine


def top_by_gap(gaps: Sequence[float], keep: float) -> list[int]:
    """Indices of the ``ceil(keep · N)`` largest gaps (at least one), in pool order."""
    n = max(1, math.ceil(keep * len(gaps)))
    order = sorted(range(len(gaps)), key=lambda i: -gaps[i])
    return sorted(order[:n])


def select_by_gap(pool: AlignedPool, policy: LoadedModel, frozen: LoadedModel, keep: float, max_length: int,
                  out: Path | None = None, step: int = 0) -> None:
    """Measure the gap now and keep the top ``keep`` share of the pool for mixing (written to
    ``out/aligned_gap.json`` for inspection)."""
    gaps = perplexity_gap(policy, frozen, pool.answers, max_length)
    pool.gaps = [float(g) for g in gaps]
    pool.selected = top_by_gap(pool.gaps, keep)
    log(f"step {step}: mixing {len(pool.selected)} of {len(gaps)} aligned answers, picked by perplexity gap "
        f"(kept gaps ≥ {min(pool.gaps[i] for i in pool.selected):+.3f})")
    if out is not None:
        write_json_atomic(out / GAP_FILE, {"step": step, "gaps": pool.gaps, "selected": pool.selected})
