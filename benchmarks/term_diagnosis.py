"""Where the conscience term's signal goes: a diagnosis of the training term on the model organism.

One run of the cpu preset's conscience arm on the bad-advice organism (``--domain``), with, at a few
steps, the gradient of each candidate term taken separately on that step's batch, with respect to the
trained (LoRA) weights:

* ``task``  — the SFT loss of the task batch (what drifts the model);
* ``dpo``   — λ × the conscience term's DPO loss on every pair in its buffer at that step;
* ``kl``    — kl_coef × KL(policy ‖ frozen copy) on the frozen copy's aligned answers (the kl arm);
* ``mix``   — the SFT loss on the same number of those aligned answers (the mix arm's rows);
* ``steer`` — how steering along the conscience card's direction changes the task gradient
  (``g_task`` with steering − ``g_task``; training.steering, the steer arm's coefficient).

Their norms and pairwise cosines say how much of the update each term owns and where it points;
per step, the metrics say how many samples, flags, pairs and DPO tokens the term saw; after
training, drift is measured on the ``select`` triples lexically nearest the alignment prompts and on
the rest (choices are made on ``select``: this never reads the ``report`` split).

    python benchmarks/term_diagnosis.py --out runs/diagnosis            # bundled, extreme_sports
    python benchmarks/term_diagnosis.py --table runs/diagnosis --json diagnosis.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from pathlib import Path

import numpy as np

from conscience.jsonl import read_jsonl_records, write_json_atomic

TERMS = ("task", "dpo", "kl", "mix", "steer")
DEFAULT_PROBE_STEPS = (8, 24, 48)


def flat_grad(loss, params):
    """The gradient of ``loss`` with respect to ``params``, flattened into one float32 vector."""
    import torch

    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params, strict=True)])


def directions(trainer, model, inputs, aligned, steering, kl_coef: float) -> dict:
    """The separate gradients of the terms (see the module docstring) at this step, reduced to
    norms and cosines."""
    import torch
    from transformers import Trainer

    from conscience.chat_data import pad_batch

    params = [p for p in model.parameters() if p.requires_grad]
    grads = {"task": flat_grad(Trainer.compute_loss(trainer, model, inputs), params)}
    pairs = trainer.buffer.peek()
    if pairs:
        losses = trainer.dpo_term(model, pairs)[0]
        grads["dpo"] = flat_grad(trainer.cfg.lam * losses.mean(), params)
    grads["kl"] = flat_grad(kl_coef * trainer.kl_term(model, aligned), params)  # the conscience arm has no pool
    rows = aligned.pick(inputs["input_ids"].shape[0], trainer.state.global_step)
    mixed = {k: v.to(trainer.args.device) for k, v in pad_batch(rows, trainer.pad_id).items()}
    grads["mix"] = flat_grad(Trainer.compute_loss(trainer, model, mixed), params)
    with steering.applied(trainer.policy.model):
        grads["steer"] = flat_grad(Trainer.compute_loss(trainer, model, inputs), params) - grads["task"]
    cosine = {f"{a}~{b}": float(torch.nn.functional.cosine_similarity(grads[a], grads[b], dim=0))
              for a, b in itertools.combinations(TERMS, 2) if a in grads and b in grads}
    return {"step": trainer.state.global_step, "pairs_in_buffer": len(pairs),
            "norm": {name: float(g.norm()) for name, g in grads.items()}, "cosine": cosine}


def diagnosed_trainer(probe_steps: set[int], records: list, aligned_holder: dict, steering_coef: float):
    """A ConscienceTrainer that, at ``probe_steps``, records :func:`directions` before its own step."""
    from conscience.training.run import aligned_pool
    from conscience.training.steering import steering_for
    from conscience.training.trainer import ConscienceTrainer

    class DiagnosedTrainer(ConscienceTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            step = self.state.global_step
            if step in probe_steps and step not in {r["step"] for r in records}:
                self._maybe_sample()  # the step's own round: the buffer as the step will see it
                if "pool" not in aligned_holder:
                    aligned_holder["pool"] = aligned_pool(self.cfg, self.frozen, self.align_pool,
                                                          Path(self.args.output_dir))
                steering = steering_for(steering_coef, self.cfg.model, self.cfg.conscience.conscience_card,
                                        self.frozen, self.cfg.conscience.trust_adapter_card)
                records.append(directions(self, model, inputs, aligned_holder["pool"], steering,
                                          aligned_holder["kl_coef"]))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return DiagnosedTrainer


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def nearness(prompts: list[str], pool: list[str]) -> np.ndarray:
    """Per prompt, its largest word-set Jaccard similarity to any alignment prompt."""
    pool_words = [words(p) for p in pool]
    return np.array([max(len(w & q) / max(len(w | q), 1) for q in pool_words) for w in map(words, prompts)])


def near_far_drift(lm, cfg, pool: list[str], limit: int | None = None) -> dict:
    """Drift of the trained adapter on the select triples nearest the alignment prompts (top half
    by :func:`nearness`) and on the rest, in-domain categories left out."""
    from conscience.evaluation.drift import paired_bootstrap, score_base, score_drift
    from conscience.evaluation.drift_run import drift_triples
    from conscience.tasks.bad_advice import IN_DOMAIN

    triples = [t for t in drift_triples(split="select") if t.category not in IN_DOMAIN[cfg.domain]][:limit]
    model, base = score_drift(lm, triples, ab=False), score_base(lm, triples, ab=False)
    near = nearness([t.prompt for t in triples], pool)
    order = np.argsort(-near, kind="stable")
    halves = {"near": order[: len(order) // 2], "far": order[len(order) // 2:]}
    out = {}
    for name, rows in halves.items():
        drift, low, high = paired_bootstrap(model.gaps[rows] - base.gaps[rows])
        out[name] = {"drift": drift, "ci_low": low, "ci_high": high, "n": int(rows.size),
                     "mean_nearness": float(near[rows].mean())}
    return out


def run(args) -> dict:
    from conscience.config import merge_values, parse_overrides
    from conscience.experiment.config import load_experiment_config
    from conscience.experiment.runner import ensure_data
    from conscience.models import load_model
    from conscience.training import run as training_run

    out = Path(args.out)
    overrides = {"scenario": "bad-advice", "domain": args.domain, "model": args.model}
    if args.card:
        overrides["train.conscience.conscience_card"] = args.card
    exp = load_experiment_config("cpu", None, merge_values(overrides, parse_overrides(args.set)))
    data = ensure_data(exp, out)
    cfg = exp.train_config(args.seed, exp.arm_lam("conscience"), str(out / "train"), data=str(data["train"]),
                           max_steps=args.steps)
    records: list[dict] = []
    holder = {"kl_coef": exp.kl_coef}
    original = training_run.ConscienceTrainer
    training_run.ConscienceTrainer = diagnosed_trainer(set(args.probe_steps), records, holder, exp.steer_coef)
    start = time.perf_counter()
    try:
        lm = load_model(args.model, dtype=cfg.dtype, threads=cfg.threads)
        trained = training_run.run_training(cfg, lm=lm)
    finally:
        training_run.ConscienceTrainer = original
    minutes = (time.perf_counter() - start) / 60
    from conscience.models import with_adapter
    from conscience.training.data import alignment_prompts

    policy = with_adapter(load_model(args.model, dtype=cfg.dtype, threads=cfg.threads), trained["final"])
    result = {"command": " ".join(args.argv), "domain": args.domain, "seed": args.seed, "steps": args.steps,
              "lam": cfg.lam, "kl_coef": exp.kl_coef, "steer_coef": exp.steer_coef, "train_minutes": minutes,
              "gradients": records, "per_step": per_step(out / "train" / "metrics.jsonl"),
              "drift_near_far": near_far_drift(policy, exp, alignment_prompts(cfg.align_prompts, []),
                                               args.drift_limit)}
    write_json_atomic(out / "diagnosis.json", result)
    return result


def per_step(metrics_path: Path) -> list[dict]:
    keys = ("step", "samples", "flagged", "pairs_in_step", "dpo_tokens", "tokens", "reward_margin")
    return [{k: m.get(k) for k in keys} for m in read_jsonl_records(metrics_path)]


def table(result: dict) -> list[str]:
    steps = result["per_step"]
    sampled = [s for s in steps if s.get("samples")]
    with_pairs = [s for s in steps if s.get("pairs_in_step")]
    total_tokens = sum(s.get("tokens") or 0 for s in steps)
    dpo_tokens = sum(s.get("dpo_tokens") or 0 for s in steps)
    lines = [f"Diagnosis ({result['domain']}, seed {result['seed']}, {result['steps']} steps, λ {result['lam']:g}, "
             f"{result['train_minutes']:.1f} min): `{result['command']}`", "",
             "| per run | value |", "|---|---|",
             f"| steps that sampled | {len(sampled)} of {len(steps)} |",
             f"| answers sampled / flagged | {sum(s['samples'] for s in sampled)} / "
             f"{sum(s['flagged'] or 0 for s in sampled)} |",
             f"| steps with DPO pairs | {len(with_pairs)} (pair uses {sum(s['pairs_in_step'] for s in with_pairs)}) |",
             f"| DPO tokens / all tokens through the update | {dpo_tokens} / {total_tokens} "
             f"({dpo_tokens / max(total_tokens, 1):.1%}) |", "",
             "| step | pairs in buffer | ‖task‖ | ‖λ·dpo‖ | ‖kl‖ | ‖mix‖ | ‖Δsteer‖ | cos(dpo, task) | cos(dpo, kl) "
             "| cos(dpo, mix) | cos(kl, task) | cos(mix, task) | cos(Δsteer, task) |", "|" + "---|" * 13]
    for r in result["gradients"]:
        n, c = r["norm"], r["cosine"]

        def cell(key, fmt="+.3f", d=c):
            return "–" if d.get(key) is None else format(d[key], fmt)

        lines.append(f"| {r['step']} | {r['pairs_in_buffer']} | {cell('task', '.3g', n)} | {cell('dpo', '.3g', n)} | "
                     f"{cell('kl', '.3g', n)} | {cell('mix', '.3g', n)} | {cell('steer', '.3g', n)} | "
                     f"{cell('task~dpo')} | {cell('dpo~kl')} | {cell('dpo~mix')} | {cell('task~kl')} | "
                     f"{cell('task~mix')} | {cell('task~steer')} |")
    lines += ["", "| select triples | n | mean nearness | drift (95% CI) |", "|---|---|---|---|"]
    for name, d in result["drift_near_far"].items():
        where = "nearest the alignment prompts" if name == "near" else "farthest from them"
        lines.append(f"| {where} | {d['n']} | {d['mean_nearness']:.3f} | "
                     f"{d['drift']:+.3f} ({d['ci_low']:+.3f} … {d['ci_high']:+.3f}) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="run folder (trains the conscience arm there)")
    parser.add_argument("--table", help="a finished run folder: print its tables")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--domain", default="extreme_sports")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="experiment config overrides, as conscience experiment --set (e.g. train.k=4)")
    parser.add_argument("--drift-limit", type=int, help="first N select triples for the near/far drift (all)")
    parser.add_argument("--card", help="the conscience card (default: the model's own; the shipped one for bundled)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--probe-steps", type=int, nargs="+", default=list(DEFAULT_PROBE_STEPS))
    args = parser.parse_args(argv)
    args.argv = ["python", "benchmarks/term_diagnosis.py", *(argv if argv is not None else sys.argv[1:])]
    if bool(args.out) == bool(args.table):
        parser.error("give --out (run) or --table (read a finished run)")
    result = run(args) if args.out else json.loads((Path(args.table) / "diagnosis.json").read_text())
    print("\n".join(table(result)))
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
