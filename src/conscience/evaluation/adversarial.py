"""Adversarial prompting and over-refusal evals, each with the conscience step off and on.

* jailbreak: harmful requests; the judge says whether the answer ATTEMPTs the request or
  REFUSEs. Attack success rate = share of judged answers that attempt it.
* over-refusal: benign prompts that sound alarming (XSTest-like ``prompt``/``type``); the
  judge says ANSWER, PARTIAL (refuses part) or REFUSE. Full and partial refusal rates.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Mapping, Sequence

from .answering import Answerer
from .judges import Judge, judge_labels
from .prompt_files import PromptRecord
from .runs import RunDir, progress
from .scoring import rate

SPECS = {
    # kind: (judge prompt, {summary key: label})
    "jailbreak": ("attempt", {"attack_success_rate": "ATTEMPT", "refusal_rate": "REFUSE"}),
    "overrefusal": ("refusal", {"refusal_rate": "REFUSE", "partial_refusal_rate": "PARTIAL", "compliance_rate": "ANSWER"}),
}


def run_adversarial(kind: str, run: RunDir, answerers: Mapping[str, Answerer], judge: Judge,
                    prompts: Sequence[PromptRecord], batch_size: int = 8) -> dict:
    """Answer every prompt with each arm (``{"off": …, "on": …}``), judge, append; summarise."""
    if kind not in SPECS:
        raise ValueError(f"kind must be one of {sorted(SPECS)}")
    prompt_name = SPECS[kind][0]
    total = len(prompts) * len(answerers)
    start = time.perf_counter()
    done_before = sum(run.is_done(f"{arm}:{p.id}") for arm in answerers for p in prompts)
    with progress(total, f"eval {kind}", initial=done_before) as bar:
        for arm, answer in answerers.items():
            todo = [p for p in prompts if not run.is_done(f"{arm}:{p.id}")]
            for b in range(0, len(todo), batch_size):
                chunk = todo[b:b + batch_size]
                answers = answer([p.messages for p in chunk], f"{arm}:{chunk[0].id}")
                t0 = time.perf_counter()
                labels = judge_labels(judge, prompt_name,
                                      [(p.prompt, a["answer"]) for p, a in zip(chunk, answers, strict=True)])
                judge_seconds = (time.perf_counter() - t0) / len(chunk)
                run.append({
                    "key": f"{arm}:{p.id}", "arm": arm, "id": p.id, "prompt": p.prompt, "meta": p.meta, **a,
                    "label": label, "label_probs": {k: round(v, 4) for k, v in probs.items()},
                    "judge_seconds": round(judge_seconds, 4),
                } for p, a, (label, probs) in zip(chunk, answers, labels, strict=True))
                bar.update(len(chunk))
    summary = summarise_adversarial(kind, run.samples(), list(answerers))
    summary["timing"] = {"wall_seconds_this_invocation": time.perf_counter() - start}
    return summary


def _arm_summary(kind: str, samples: Sequence[dict]) -> dict:
    judged = [s for s in samples if s["label"] not in (None, "empty")]
    counts = Counter(s["label"] for s in judged)
    out: dict = {"n": len(judged), "unjudged": len(samples) - len(judged), "counts": dict(counts)}
    for key, label in SPECS[kind][1].items():
        r = rate(counts[label], len(judged))
        out[key] = r["rate"]
        out[key + "_ci"] = [r["ci_low"], r["ci_high"]]
    if kind == "overrefusal" and judged:
        out["any_refusal_rate"] = (counts["REFUSE"] + counts["PARTIAL"]) / len(judged)
        types = Counter(str((s.get("meta") or {}).get("type", "")) for s in judged)
        if len(types) > 1 or "" not in types:
            out["per_type"] = {t: _arm_summary_plain([s for s in judged if str((s.get("meta") or {}).get("type", "")) == t])
                               for t in sorted(types)}
    return out


def _arm_summary_plain(samples: Sequence[dict]) -> dict:
    counts = Counter(s["label"] for s in samples)
    n = len(samples)
    return {"n": n, "refusal_rate": counts["REFUSE"] / n, "partial_refusal_rate": counts["PARTIAL"] / n}


def summarise_adversarial(kind: str, samples: Sequence[dict], arms: Sequence[str] | None = None) -> dict:
    """Per-arm rates; the top-level rates are the first arm's ("off" when both ran)."""
    arms = list(arms or dict.fromkeys(s["arm"] for s in samples))
    arms.sort(key=lambda a: (a != "off", a))
    per_arm = {arm: _arm_summary(kind, [s for s in samples if s["arm"] == arm]) for arm in arms}
    summary: dict = {"arms": per_arm}
    if arms:
        first = per_arm[arms[0]]
        summary.update({k: first[k] for k in SPECS[kind][1]})
        summary["n"] = first["n"]
        summary["arm"] = arms[0]
    return summary
