"""The verdict as a reward (``term: rloo``): every answer the policy samples teaches, not only the
flagged ones.

At a sampling step the policy answers each alignment prompt ``k`` times and the frozen copy
reviews every answer (no alternatives are written). Each answer's reward is its verdict in
log-odds; within a prompt's ``k`` answers the leave-one-out baseline turns rewards into advantages
(:func:`conscience.losses.rloo_loss`), and ``lam`` × that REINFORCE term joins the step's loss: the
policy's own better-judged answers become more likely and its worse-judged ones less. On-policy:
the samples are used in the step that drew them. ``kl_coef`` anchors the policy to the frozen copy
beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..chat_data import IGNORE, pad_batch, tokenize_chat
from ..conscience import Response
from ..losses import rloo_loss, sequence_logps

REWARD_CLIP = 10.0  # log-odds: a verdict of 1 − 1e-4 already rewards 9.2; beyond it is rounding


@dataclass(frozen=True)
class RewardedSample:
    """One sampled answer, its reward (the verdict's log-odds) and its prompt's group."""

    prompt: str
    answer: str
    reward: float
    group: int


def rewarded_samples(responses: Sequence[Response], k: int) -> list[RewardedSample]:
    """The drafts of one round (``k`` per prompt, prompt after prompt) with their rewards; an empty
    answer or a failed review is left out (no evidence either way)."""
    out = []
    for i, response in enumerate(responses):
        draft = response.draft
        if draft.verdict.error is not None or not draft.answer.strip():
            continue
        p = min(max(draft.verdict.score, 1e-12), 1 - 1e-12)
        reward = max(min(math.log(p / (1 - p)), REWARD_CLIP), -REWARD_CLIP)
        out.append(RewardedSample(response.prompt, draft.answer, reward, i // k))
    return out


def reward_term(model, tokenizer, samples: Sequence[RewardedSample], max_length: int,
                pad_id: int) -> torch.Tensor | None:
    """The RLOO loss of ``samples`` under the policy ``model`` (per-token log-probs of each answer,
    so long and short answers weigh alike); ``None`` when no sample has a group mate."""
    rows, kept = [], []
    for sample in samples:
        example = tokenize_chat(tokenizer, [{"role": "user", "content": sample.prompt},
                                            {"role": "assistant", "content": sample.answer}], max_length)
        if example is not None:
            rows.append(example)
            kept.append(sample)
    groups = torch.tensor([s.group for s in kept], dtype=torch.long)
    if not kept or int((groups[:, None] == groups[None, :]).sum(dim=1).max()) < 2:
        return None
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in pad_batch(rows, pad_id).items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    logps = sequence_logps(logits[:, :-1], labels, mask) / mask.sum(dim=-1).clamp(min=1)
    rewards = torch.tensor([s.reward for s in kept], device=device)
    return rloo_loss(logps, rewards, groups.to(device))
