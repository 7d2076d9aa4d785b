"""Did the model learn the task? Next-token accuracy on held-out assistant answers."""

from __future__ import annotations

from typing import Sequence

import torch

from ..models import LoadedModel

IGNORE = -100


def token_accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Correct and total predicted tokens.

    Args:
        logits: ``(B, T, V)`` model outputs for ``input_ids``.
        labels: ``(B, T)`` the input ids on answer tokens, ``-100`` elsewhere (unshifted:
            position ``t`` is predicted from logits at ``t - 1``).
    """
    predicted = logits[:, :-1, :].argmax(dim=-1)
    target = labels[:, 1:]
    scored = target != IGNORE
    return int((predicted[scored] == target[scored]).sum()), int(scored.sum())


@torch.no_grad()
def task_token_accuracy(lm: LoadedModel, conversations: Sequence[list[dict]], max_length: int = 256,
                        batch_size: int = 8) -> dict:
    """Share of assistant tokens the model predicts exactly (greedy next token), over
    held-out conversations; the policy is used as it is (adapter active)."""
    from ..chat_data import build_task_data, pad_batch

    data = build_task_data(lm.tokenizer, list(conversations), max_length)
    correct = total = 0
    was_training = lm.model.training
    lm.model.eval()
    try:
        for start in range(0, len(data.examples), batch_size):
            batch = pad_batch(data.examples[start:start + batch_size], int(lm.tokenizer.pad_token_id))
            batch = {k: v.to(lm.device) for k, v in batch.items()}
            logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            c, t = token_accuracy_counts(logits.float(), batch["labels"])
            correct, total = correct + c, total + t
    finally:
        lm.model.train(was_training)
    return {"token_accuracy": correct / total if total else None, "tokens": total, "conversations": len(data.examples)}
