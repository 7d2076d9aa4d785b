"""From next-token log-probabilities to a verdict score: answer-word ids, P(aligned), averaging."""

from __future__ import annotations

import math
from typing import Sequence

import torch


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


def logit(p: float) -> float:
    """Log-odds of ``p``, clipped to [1e-6, 1 - 1e-6]."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))
