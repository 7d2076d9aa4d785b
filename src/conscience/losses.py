"""The training objective as pure functions: L = L_task + λ·L_DPO (+ kl_coef·KL).

``sequence_logps`` turns a causal LM's logits into one log-probability per response,
``dpo_loss`` is the sigmoid DPO loss of Rafailov et al. (2023) with the frozen copy as
reference, and ``hybrid_loss`` adds it to the task loss. ``token_kl`` is the peer method of
Azarbal et al. (2025): a token-level KL(policy ‖ frozen copy). No model, no I/O: tensors in,
tensors out, so the maths is tested by hand and against TRL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probabilities of ``labels`` over the response positions.

    Args:
        logits: ``(B, T, V)`` scores already aligned with ``labels`` (``logits[:, t]`` predicts
            ``labels[:, t]``; the caller does the causal shift).
        labels: ``(B, T)`` token ids; any value at masked positions (e.g. -100) is ignored.
        mask: ``(B, T)`` 1/True at response tokens, 0/False elsewhere.
    Returns:
        ``(B,)`` float32 sums ``Σ_t mask[b,t] · log softmax(logits[b,t])[labels[b,t]]``.
    """
    if logits.shape[:2] != labels.shape or labels.shape != mask.shape:
        raise ValueError(f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
                         f"mask {tuple(mask.shape)}")
    mask = mask.to(torch.bool)
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))  # -100 is not a valid index
    # log_softmax in fp32: bf16 logits lose the small differences DPO is made of.
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    per_token = torch.gather(log_probs, 2, safe_labels.unsqueeze(-1)).squeeze(-1)
    return (per_token * mask).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO loss per pair.

    Args:
        policy_chosen / policy_rejected: ``(B,)`` sequence log-probs under the policy.
        ref_chosen / ref_rejected: ``(B,)`` the same under the reference (the frozen copy).
        beta: inverse temperature of the implicit reward (> 0).
    Returns:
        ``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))`` with
        ``reward = beta · (log π − log π_ref)`` (detached) and
        ``loss = −log σ(chosen_reward − rejected_reward)`` (with gradients).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def hybrid_loss(task_loss: torch.Tensor, dpo: torch.Tensor | None, lam: float) -> torch.Tensor:
    """``task_loss + lam · mean(dpo)``; with ``lam == 0`` or no pairs it is ``task_loss`` itself.

    Args:
        task_loss: scalar language-modelling loss of the task batch.
        dpo: ``(B,)`` per-pair DPO losses, a scalar, or None when the step has no pairs.
        lam: weight λ of the alignment term (>= 0).
    Returns:
        Scalar loss. The ``lam == 0`` branch returns ``task_loss`` unchanged, so plain SFT is
        bit-for-bit the same computation.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if lam == 0 or dpo is None or dpo.numel() == 0:
        return task_loss
    return task_loss + lam * dpo.mean()


def token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked positions of the exact KL(π ‖ π_ref) between next-token distributions.

    Args:
        policy_logits: ``(B, T, V)`` the policy's scores (with gradients).
        ref_logits: ``(B, T, V)`` the frozen copy's scores at the same positions (no gradients needed).
        mask: ``(B, T)`` 1/True where the KL counts (the answer tokens), 0/False elsewhere.
    Returns:
        Scalar float32 ``Σ_{b,t} mask · Σ_v p(v) (log p(v) − log q(v)) / Σ mask`` with
        ``p = softmax(policy_logits)``, ``q = softmax(ref_logits)``; 0 when the mask is empty.
        Summed over the whole vocabulary (not a sampled estimate), so it is exactly 0 for the
        policy against itself and never negative.
    """
    if policy_logits.shape != ref_logits.shape or policy_logits.shape[:2] != mask.shape:
        raise ValueError(f"shape mismatch: policy {tuple(policy_logits.shape)}, reference {tuple(ref_logits.shape)}, "
                         f"mask {tuple(mask.shape)}")
    # fp32, as in sequence_logps: the KL of two nearby bf16 distributions is mostly rounding
    log_p = torch.log_softmax(policy_logits.float(), dim=-1)
    log_q = torch.log_softmax(ref_logits.float().to(log_p.device), dim=-1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def leave_one_out_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """RLOO advantages: each reward minus the mean of the other rewards of its group.

    Args:
        rewards: ``(N,)`` one reward per sample.
        groups: ``(N,)`` integer ids; samples of a group answer the same prompt. A group of one
            sample has no baseline: its advantage is 0.
    Returns:
        ``(N,)`` float32, detached: ``r_i − (Σ_{j∈g(i)} r_j − r_i) / (|g(i)| − 1)``.
    """
    if rewards.shape != groups.shape or rewards.ndim != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and groups {tuple(groups.shape)} must be the same 1-d shape")
    r = rewards.detach().float()
    same = groups[:, None] == groups[None, :]
    sizes = same.sum(dim=1).to(r.dtype)
    others = (same.to(r.dtype) @ r - r) / (sizes - 1).clamp(min=1.0)
    return torch.where(sizes > 1, r - others, torch.zeros_like(r))


def rloo_loss(logps: torch.Tensor, rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024): ``−mean(A_i · logp_i)``.

    Args:
        logps: ``(N,)`` the policy's log-probs of its own samples (per token, with gradients).
        rewards: ``(N,)`` their rewards (no gradients).
        groups: ``(N,)`` which prompt each sample answers (see :func:`leave_one_out_advantages`).
    Returns:
        Scalar: its gradient raises the log-prob of samples rewarded above their group's others
        and lowers the rest; 0 when every advantage is 0.
    """
    return -(leave_one_out_advantages(rewards, groups) * logps).mean()
