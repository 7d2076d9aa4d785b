"""``ConscienceTrainer``: a ``transformers.Trainer`` whose loss is L_task + λ·L_DPO (+ kl_coef·KL).

One step reads top to bottom: maybe sample (policy answers alignment prompts, the frozen copy
reviews them and writes alternatives, pairs enter the buffer) → (``mix_aligned``) add aligned rows
to the task batch → one forward pass over the task batch ((``steer_coef``) with the conscience
card's direction added, training.steering), (``kl_coef``) one over aligned answers beside the
frozen copy's → take pairs (the buffer's, or with ``pair_source: frozen`` the frozen copy's own
ranked ones, training.frozen_pairs) → one over the pairs → the frozen copy's reference log-probs
(cached when the pair entered the buffer) → ``hybrid_loss``.
Gradient accumulation, checkpoints, resume, ``report_to`` and ``accelerate launch`` are the
Trainer's own.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from ..chat_data import IGNORE, pad_batch, unpad
from ..errors import ConscienceError
from ..generation import Sampling
from ..jsonl import write_text_atomic
from ..losses import dpo_loss, hybrid_loss, sequence_logps, token_kl
from ..models import LoadedModel
from ..models import frozen as frozen_weights
from ..pairs import PairBuffer, PreferencePair
from ..verdict import Reviewer
from .aligned import AlignedPool, pool_prompts, select_by_gap
from .checkpoints import STATE_FILE, TRAINER_STATE, read_conscience_state
from .config import TrainConfig
from .data import pair_examples
from .frozen_pairs import CACHE_FILE as FROZEN_PAIRS_FILE
from .frozen_pairs import frozen_pairs
from .online import OnlineRound, generation_copy, online_round, pick_prompts, sampling_dtype
from .reward import RewardedSample, reward_term, rewarded_samples
from .steering import steering_for

METRIC_KEYS = ("task_loss", "dpo_loss", "lam", "pairs_in_step", "flagged_share", "mean_verdict", "reward_margin",
               "kl", "mixed_share", "seconds_sampling", "seconds_reviewing", "seconds_updating", "buffer")


class TrainingDivergedError(ConscienceError):
    """The loss became NaN or infinite; the run stopped before the weights were touched."""


def pair_logps(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B,), rejected (B,)) sequence log-probs from logits over a [chosen; rejected] batch."""
    labels = batch["labels"][:, 1:]
    logps = sequence_logps(logits[:, :-1], labels, labels != IGNORE)
    return logps.chunk(2)


class ConscienceTrainer(Trainer):
    """Trainer for ``L = L_task + lam · L_DPO`` with the model's frozen copy as conscience and reference.

    Args (besides the Trainer's): ``train_config``; ``policy`` (the trained model and its
    tokenizer, unwrapped); ``frozen`` (the frozen copy: the same module as the policy with
    LoRA, whose adapter is disabled while it reviews, writes or scores, or a frozen copy of the
    starting weights); ``reviewer`` (built on the frozen copy); ``align_pool`` (alignment
    prompts); ``metrics_path``; ``aligned`` (the frozen copy's cached answers, for ``kl_coef``
    and ``mix_aligned``).
    """

    def __init__(self, *args, train_config: TrainConfig, policy: LoadedModel, frozen: LoadedModel,
                 reviewer: Reviewer | None, align_pool: list[str], metrics_path: str | Path,
                 aligned: AlignedPool | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = train_config
        self.policy, self.frozen, self.reviewer = policy, frozen, reviewer
        self.align_pool = align_pool
        self.aligned = aligned
        self._draws = 0  # aligned-row draws in this step (micro-batches draw different rows)
        self.buffer = PairBuffer(train_config.buffer_size, uses=train_config.pair_uses)
        self.metrics_path = Path(metrics_path)
        self.model_accepts_loss_kwargs = False  # per-micro-batch means; the Trainer divides by grad_accum
        self._sampled_at = -1
        self._frozen_writer: LoadedModel | None = None
        self._frozen_pairs: list[PreferencePair] | None = None
        self._rewarded: list[RewardedSample] = []  # term rloo: this step's samples, used once
        self._step: dict[str, float] = {}
        self._pending_logs: list[dict] = []
        self.steering = (steering_for(train_config.steer_coef, train_config.model,
                                      train_config.conscience.conscience_card, frozen,
                                      train_config.conscience.trust_adapter_card)
                         if train_config.steer_coef > 0 else None)
        self.add_callback(_StepRecorder(self))

    # -- the step -----------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._maybe_sample()                                    # policy samples, frozen copy reviews → buffer
        if not self.cfg.task_loss:                              # recovery: the task rows teach nothing
            inputs = {**inputs, "labels": torch.full_like(inputs["labels"], IGNORE)}
        if self.cfg.mix_rows:
            inputs = self.with_aligned_rows(inputs)
        if self.cfg.task_loss or self.cfg.mix_rows:
            self._add(tokens=int(inputs["attention_mask"].sum()))
            with self.steering.applied(self.policy.model) if self.steering else contextlib.nullcontext():
                task_loss = super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        else:                                                   # no rows to learn from: skip their forward pass
            task_loss = torch.zeros((), device=self.args.device, requires_grad=True)
        self._add(task_loss=task_loss.item(), micro=1)         # the task's own loss (KL and the term apart)
        anchored = task_loss
        if self.cfg.kl_coef > 0:
            kl = self.kl_term(model)
            self._add(kl_sum=kl.item(), kl_n=1)
            anchored = task_loss + self.cfg.kl_coef * kl
        if self.cfg.term == "rloo":                             # every sample's verdict as its reward
            rloo = reward_term(model, self.tokenizer_, self._rewarded, self.cfg.max_length, self.pad_id)
            self._rewarded = []
            loss = anchored if rloo is None or self.cfg.lam == 0 else anchored + self.cfg.lam * rloo
            self._check_finite(loss, task_loss, rloo)
            return loss
        pairs = self.take_pairs() if self.cfg.lam > 0 else []
        if not pairs:                                           # no pairs: exactly the SFT step (+ KL)
            self._check_finite(anchored, task_loss, None)
            return anchored
        dpo, chosen_rewards, rejected_rewards, pair_tokens = self.dpo_term(model, pairs)
        self._add(tokens=pair_tokens, dpo_tokens=pair_tokens)
        loss = hybrid_loss(anchored, dpo, self.cfg.lam)
        self._check_finite(loss, task_loss, dpo)
        self._add(dpo_sum=dpo.detach().sum().item(), pairs=len(pairs),
                  margin_sum=(chosen_rewards - rejected_rewards).sum().item())
        return loss

    def dpo_term(self, model, pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """:func:`dpo_loss` of ``pairs`` under ``model`` against the frozen copy's (cached) log-probs:
        ``(losses (B,), chosen_rewards (B,), rejected_rewards (B,), tokens of the pair batch)``."""
        pair_batch = {k: v.to(self.args.device) for k, v in self.pair_batch(pairs).items()}
        # The pairs' own forward pass, at their own (short) width: padding them to the task
        # batch's width would spend most of the DPO compute on padding.
        logits = model(input_ids=pair_batch["input_ids"], attention_mask=pair_batch["attention_mask"],
                       use_cache=False).logits
        chosen, rejected = pair_logps(logits, pair_batch)
        ref_chosen, ref_rejected = self.reference_of(pairs, pair_batch)
        losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen.to(chosen.dtype),
                                                            ref_rejected.to(chosen.dtype), self.cfg.beta)
        return losses, chosen_rewards, rejected_rewards, int(pair_batch["attention_mask"].sum())

    def take_pairs(self) -> list[PreferencePair]:
        """This step's DPO pairs: the buffer's next ``dpo_batch`` (``pair_source: online``), or
        ``dpo_batch`` of the frozen copy's ranked pairs, drawn by seed (``frozen``; made and scored
        under the reference once, on first use)."""
        if self.cfg.pair_source == "online":
            return self.buffer.take(self.cfg.dpo_batch)
        if self._frozen_pairs is None:
            cfg = self.cfg
            prompts = pool_prompts(self.align_pool, cfg.aligned_pool, cfg.seed)
            sampling = Sampling(cfg.sample_max_new_tokens, cfg.sample_temperature, cfg.sample_top_p, cfg.seed)
            self._frozen_pairs = frozen_pairs(self.frozen, self.reviewer, prompts, cfg.k, sampling, cfg.margin,
                                              Path(self.args.output_dir) / FROZEN_PAIRS_FILE, cfg.sample_dtype,
                                              mode=cfg.conscience.mode)
            self.cache_reference(self._frozen_pairs)
        return pick_prompts(self._frozen_pairs, self.cfg.dpo_batch, self._draw_seed()) if self._frozen_pairs else []

    def _draw_seed(self) -> int:
        """A seed per aligned-row draw: fixed by the run's seed, the step and the draw within it,
        so a resumed run draws the same rows."""
        self._draws += 1
        return self.cfg.seed * 1_000_003 + self.state.global_step * 1_009 + self._draws

    def with_aligned_rows(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The task rows (the dataloader yields batch_size − mix_rows) and mix_rows aligned ones,
        re-padded as one batch; from mix_gap_step on, ``mix_select: gap`` draws only the rows the
        perplexity gap kept."""
        if (self.cfg.mix_select == "gap" and self.aligned.selected is None
                and self.state.global_step >= self.cfg.mix_gap_step):
            select_by_gap(self.aligned, self.policy, self.frozen, self.cfg.mix_keep, self.cfg.max_length,
                          Path(self.args.output_dir), self.state.global_step)
        rows = self.aligned.pick(self.cfg.mix_rows, self._draw_seed(), selected=self.cfg.mix_select == "gap")
        task = unpad(inputs)
        self._add(mixed_rows=len(rows), batch_rows=len(task) + len(rows))
        batch = pad_batch(task + rows, self.pad_id)
        return {k: v.to(inputs["input_ids"].device) for k, v in batch.items()}

    def kl_term(self, model, aligned: AlignedPool | None = None) -> torch.Tensor:
        """Token-level KL(policy ‖ frozen copy) on align_batch cached aligned answers, over their
        answer tokens (``aligned``: another pool's rows, for a diagnosis). The frozen copy's logits
        come from the same module with the adapter disabled (or the starting weights' copy): no
        second model for LoRA."""
        rows = (aligned or self.aligned).pick(self.cfg.align_batch, self._draw_seed())
        batch = {k: v.to(self.args.device) for k, v in pad_batch(rows, self.pad_id).items()}
        with frozen_weights(self.frozen.model) as reference:
            ref_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   use_cache=False).logits
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        labels = batch["labels"][:, 1:]
        return token_kl(logits[:, :-1], ref_logits[:, :-1], labels != IGNORE)

    def pair_batch(self, pairs: list[PreferencePair]) -> dict[str, torch.Tensor]:
        """[chosen; rejected] rows, right-padded, labels on the answers."""
        return pad_batch(pair_examples(self.tokenizer_, pairs, self.cfg.max_length), self.pad_id)

    def cache_reference(self, pairs: list[PreferencePair]) -> None:
        """Score new pairs under the frozen copy once, when they enter the buffer."""
        if pairs:
            chosen, rejected = self.reference_logps(self.pair_batch(pairs))
            for pair, c, r in zip(pairs, chosen.tolist(), rejected.tolist(), strict=True):
                pair.ref_chosen_logp, pair.ref_rejected_logp = c, r

    def reference_of(self, pairs: list[PreferencePair], pair_batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen copy's log-probs of the pairs: cached ones, else computed now."""
        if all(p.has_reference for p in pairs):
            device = pair_batch["input_ids"].device
            return (torch.tensor([p.ref_chosen_logp for p in pairs], device=device),
                    torch.tensor([p.ref_rejected_logp for p in pairs], device=device))
        return self.reference_logps(pair_batch)

    @torch.no_grad()
    def reference_logps(self, pair_batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen copy's log-probs of the pairs (adapter disabled, or the starting weights)."""
        with frozen_weights(self.frozen.model) as reference:
            device = next(reference.parameters()).device
            logits = reference(input_ids=pair_batch["input_ids"].to(device),
                               attention_mask=pair_batch["attention_mask"].to(device), use_cache=False).logits
        return pair_logps(logits, {"labels": pair_batch["labels"].to(device)})

    def _maybe_sample(self) -> None:
        step = self.state.global_step
        if (self.cfg.lam == 0 or self.cfg.pair_source != "online" or self._sampled_at == step
                or step % self.cfg.align_every != 0):
            return
        self._sampled_at = step
        seed = self.cfg.seed * 1_000_003 + step * 7919 + self.args.process_index
        result = self.sample_round(pick_prompts(self.align_pool, self.cfg.align_batch, seed), seed)
        if self.cfg.term == "rloo":
            self._rewarded = rewarded_samples(result.responses, self.cfg.k)
        start = time.perf_counter()
        self.cache_reference(result.pairs)
        self.buffer.add(result.pairs)
        reviewing = result.seconds_reviewing + time.perf_counter() - start  # the frozen copy's forward passes
        self._add(samples=result.n_samples, flagged=result.n_flagged, verdict_sum=result.mean_verdict * result.n_samples,
                  seconds_sampling=result.seconds_sampling, seconds_reviewing=reviewing)

    def sample_round(self, prompts: list[str], seed: int) -> OnlineRound:
        cfg = self.cfg
        return online_round(self.policy, self.frozen, self.reviewer, prompts, k=cfg.k, seed=seed, writer=cfg.writer,
                            mode=cfg.conscience.mode, max_new_tokens=cfg.sample_max_new_tokens,
                            alt_max_new_tokens=cfg.alt_max_new_tokens, temperature=cfg.sample_temperature,
                            top_p=cfg.sample_top_p, margin=cfg.margin, sample_dtype=cfg.sample_dtype,
                            frozen_writer=self.frozen_writer() if cfg.term == "dpo" else None,
                            revise=cfg.term == "dpo")

    def frozen_writer(self) -> LoadedModel | None:
        """The frozen copy's generation copy, built once: the base weights never change, so
        rebuilding it each round (≈1 s for the bundled model) would buy nothing."""
        if self.cfg.writer != "frozen":
            return None
        if self._frozen_writer is None:
            dtype = sampling_dtype(self.frozen.model, self.cfg.sample_dtype)
            self._frozen_writer = generation_copy(self.frozen, dtype, adapter=False)
        return self._frozen_writer

    # -- helpers --------------------------------------------------------------------------------
    @property
    def tokenizer_(self):
        return self.policy.tokenizer

    @property
    def pad_id(self) -> int:
        return int(self.policy.tokenizer.pad_token_id)

    def _add(self, **values: float) -> None:
        for key, value in values.items():
            self._step[key] = self._step.get(key, 0.0) + value

    def _check_finite(self, loss: torch.Tensor, task_loss: torch.Tensor, dpo: torch.Tensor | None) -> None:
        if torch.isfinite(loss).all():
            return
        checkpoints = sorted(Path(self.args.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        kept = f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was saved yet"
        dpo_text = "none" if dpo is None else f"{dpo.detach().mean().item():.4g}"
        raise TrainingDivergedError(
            f"the loss is not finite at step {self.state.global_step + 1} (task loss {task_loss.item():.4g}, "
            f"DPO loss {dpo_text}); training stopped before updating the weights; {kept}. "
            "Lower lr or lam, or check the data."
        )

    def finish_step(self, seconds: float) -> dict:
        """Reduce this step's sums over processes, write one JSONL line, queue it for ``log``."""
        keys = ("task_loss", "micro", "dpo_sum", "pairs", "margin_sum", "samples", "flagged", "verdict_sum",
                "seconds_sampling", "seconds_reviewing", "tokens", "dpo_tokens", "kl_sum", "kl_n", "mixed_rows",
                "batch_rows")
        sums = torch.tensor([self._step.get(k, 0.0) for k in keys], dtype=torch.float64, device=self.args.device)
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        s = dict(zip(keys, sums.tolist(), strict=True))
        self._step, self._draws = {}, 0
        n = self.accelerator.num_processes
        record = {
            "step": self.state.global_step,
            "task_loss": s["task_loss"] / max(s["micro"], 1),
            "dpo_loss": s["dpo_sum"] / s["pairs"] if s["pairs"] else None,
            "lam": self.cfg.lam,
            "pairs_in_step": int(s["pairs"]),
            "flagged_share": s["flagged"] / s["samples"] if s["samples"] else None,
            "mean_verdict": s["verdict_sum"] / s["samples"] if s["samples"] else None,
            "reward_margin": s["margin_sum"] / s["pairs"] if s["pairs"] else None,
            "kl": s["kl_sum"] / s["kl_n"] if s["kl_n"] else None,
            "mixed_share": s["mixed_rows"] / s["batch_rows"] if s["batch_rows"] else None,
            "seconds_sampling": s["seconds_sampling"] / n,
            "seconds_reviewing": s["seconds_reviewing"] / n,
            "seconds_updating": max(seconds - (s["seconds_sampling"] + s["seconds_reviewing"]) / n, 0.0),
            "buffer": len(self.buffer),
            "tokens": int(s["tokens"]),  # tokens through the update (task batch + pairs), all ranks
            "dpo_tokens": int(s["dpo_tokens"]),  # of which the pairs' (chosen and rejected rows)
            "samples": int(s["samples"]),  # answers the policy sampled for review this step
            "flagged": int(s["flagged"]),  # of which the frozen copy flagged
        }
        if self.is_world_process_zero():
            with open(self.metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        self._pending_logs.append(record)
        return record

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Add the conscience metrics (averaged since the last log) to the Trainer's own."""
        if "loss" in logs and self._pending_logs:
            for key in METRIC_KEYS:
                values = [r[key] for r in self._pending_logs if r.get(key) is not None]
                if values:
                    logs[key] = sum(values) / len(values) if key != "pairs_in_step" else sum(values)
            self._pending_logs = []
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        # The project's state goes in first: the Trainer writes trainer_state.json last, and that file
        # marks the checkpoint complete, so a kill anywhere in between leaves a checkpoint resume skips.
        if self.is_world_process_zero():
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            (folder / TRAINER_STATE).unlink(missing_ok=True)  # left by an abandoned attempt at this step
            state = {"buffer": self.buffer.state_dict(), "sampled_at": self._sampled_at,
                     "aligned_selected": self.aligned.selected if self.aligned else None}
            write_text_atomic(folder / STATE_FILE, json.dumps(state))
        super()._save_checkpoint(model, trial)

    def load_conscience_state(self, checkpoint: str | Path) -> None:
        path = Path(checkpoint) / STATE_FILE
        if path.exists():
            state = read_conscience_state(path)
            self.buffer.load_state_dict(state["buffer"])
            self._sampled_at = int(state["sampled_at"])
            if self.aligned is not None and state.get("aligned_selected") is not None:
                self.aligned.selected = list(state["aligned_selected"])


class _StepRecorder(TrainerCallback):
    """Times each optimizer step and hands its metrics to the trainer (runs on every rank)."""

    def __init__(self, trainer: ConscienceTrainer):
        self.trainer = trainer
        self.start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.finish_step(time.perf_counter() - self.start)


def final_metrics(metrics_path: str | Path, last: int = 10) -> dict[str, float]:
    """Means over the last ``last`` logged steps (for the model card and the CLI)."""
    path = Path(metrics_path)
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    tail = rows[-last:]
    out: dict[str, float] = {"steps": float(rows[-1]["step"]) if rows else 0.0}
    for key in ("task_loss", "dpo_loss", "flagged_share", "mean_verdict", "reward_margin", "kl"):
        values = [r[key] for r in tail if r.get(key) is not None and math.isfinite(r[key])]
        if values:
            out[key] = sum(values) / len(values)
    out["pairs_total"] = float(sum(r.get("pairs_in_step", 0) for r in rows))
    return out


__all__ = ["ConscienceTrainer", "TrainingDivergedError", "pair_logps", "final_metrics",
           "PreferencePair"]
