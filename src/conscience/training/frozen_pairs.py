"""Pairs from the frozen copy's own answers, ranked by its conscience (``pair_source: frozen``).

Before training, the frozen copy answers up to ``aligned_pool`` alignment prompts ``k`` times each;
the conscience reviews every answer, and each prompt whose best and worst answers differ by at least
``margin`` in the verdict's score gives one pair (chosen = the best, rejected = the worst). The pairs
are cached beside the run and every step draws ``dpo_batch`` of them, so the DPO term constrains
every step (as KL and mixing do) with no sampling during training, and each pair says which way the
model's own conscience ranks two things the model itself would say.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from ..conscience import Conscience
from ..generation import LocalGenerator, Sampling
from ..jsonl import write_json_atomic
from ..log import log
from ..models import LoadedModel
from ..pairs import PreferencePair
from ..verdict import Reviewer
from .aligned import cache_key
from .online import _sampling, generation_copy, sampling_dtype

CACHE_FILE = "frozen_pairs.json"


def rank_pairs(prompts: Sequence[str], answers: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
               margin: float) -> list[PreferencePair]:
    """One pair per prompt whose best-scored answer beats its worst by ``margin`` (ties: the first
    best, the last worst); empty or identical answers give none."""
    pairs = []
    for prompt, texts, values in zip(prompts, answers, scores, strict=True):
        rows = [(s, t) for s, t in zip(values, texts, strict=True) if t.strip()]
        if len(rows) < 2:
            continue
        best = max(rows, key=lambda r: r[0])
        worst = min(reversed(rows), key=lambda r: r[0])
        if best[0] - worst[0] >= margin and best[1].strip() != worst[1].strip():
            pairs.append(PreferencePair(prompt, best[1], worst[1], float(best[0]), float(worst[0]), "frozen"))
    return pairs


def frozen_pairs(frozen: LoadedModel, reviewer: Reviewer, prompts: Sequence[str], k: int, sampling: Sampling,
                 margin: float, path: str | Path, sample_dtype: str = "auto", batch_size: int = 8,
                 mode: str = "chat") -> list[PreferencePair]:
    """The pairs (see the module docstring), read from ``path`` when it holds them for the same
    model, prompts, sampling, verdict and margin, else made and written atomically."""
    path = Path(path)
    dtype = sampling_dtype(frozen.model, sample_dtype)
    key = {**cache_key(frozen, prompts, sampling, str(dtype)), "k": k, "margin": margin,
           "verdict": reviewer.framing_name}
    if path.exists():
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("key") == key:
            return [PreferencePair.from_dict(p, f"{path}: pair {i}") for i, p in enumerate(doc["pairs"])]
    log(f"the frozen copy answers {len(prompts)} alignment prompts {k} times and reviews each (cached in {path})")
    answers: list[list[str]] = []
    scores: list[list[float]] = []
    with _sampling(frozen.model):  # eval mode, private RNG: the training stream is not moved
        writer = LocalGenerator(generation_copy(frozen, dtype, adapter=False), frozen_weights=True)
        conscience = Conscience(writer, judge=frozen, reviewer=reviewer, mode=mode, max_rounds=0)
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            seed = None if sampling.seed is None else sampling.seed + start
            step = conscience.step(chunk, dataclasses.replace(sampling, seed=seed), k=k, max_rounds=0)
            for i in range(len(chunk)):
                # an answer whose review failed is no evidence either way: it is left out of the ranking
                rows = [r.draft for r in step.responses[i * k:(i + 1) * k] if r.draft.verdict.error is None]
                answers.append([d.answer for d in rows])
                scores.append([d.verdict.score for d in rows])
    pairs = rank_pairs(prompts, answers, scores, margin)
    write_json_atomic(path, {"key": key, "pairs": [p.to_dict() for p in pairs]})
    log(f"{len(pairs)} pairs from {len(prompts)} prompts (margin {margin})")
    return pairs
