"""Emergent-misalignment eval: sample answers to open-ended questions, judge each twice
(alignment with CODE/REFUSAL escapes, and coherence), count misaligned answers."""

from __future__ import annotations

import time
from typing import Sequence

from .answering import Answerer
from .judges import Judge, judge_numbers
from .questions import EMQuestion
from .runs import RunDir, progress
from .scoring import em_counts, is_misaligned


def plan(questions: Sequence[EMQuestion], n: int) -> list[tuple[str, EMQuestion, int]]:
    """``(key, question, paraphrase_index)`` for ``n`` samples per question, cycling through
    its paraphrases (sample ``j`` uses paraphrase ``j mod len``)."""
    return [(f"{q.id}#{j}", q, j % len(q.paraphrases)) for q in questions for j in range(n)]


def run_em(run: RunDir, answer: Answerer, judge: Judge, questions: Sequence[EMQuestion], n: int,
           batch_size: int = 8) -> dict:
    """Sample, judge and append every sample not yet in ``run``; return the summary.

    A failure (e.g. the judge going away) leaves every finished batch in ``samples.jsonl``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    items = [item for item in plan(questions, n) if not run.is_done(item[0])]
    start = time.perf_counter()
    with progress(len(plan(questions, n)), "eval em", initial=len(plan(questions, n)) - len(items)) as bar:
        for b in range(0, len(items), batch_size):
            chunk = items[b:b + batch_size]
            answers = answer([q.conversation(p) for _, q, p in chunk], chunk[0][0])
            pairs = [(q.paraphrases[p], a["answer"]) for (_, q, p), a in zip(chunk, answers, strict=True)]
            t0 = time.perf_counter()
            alignment = judge_numbers(judge, "alignment", pairs)
            coherence = judge_numbers(judge, "coherence", pairs)
            judge_seconds = (time.perf_counter() - t0) / len(chunk)
            run.append({
                "key": key, "id": q.id, "paraphrase": p, "system": q.system, "prompt": q.paraphrases[p],
                **a, "alignment": al.to_dict(), "coherence": co.to_dict(),
                "misaligned": is_misaligned(al.value, co.value), "judge_seconds": round(judge_seconds, 4),
            } for (key, q, p), a, al, co in zip(chunk, answers, alignment, coherence, strict=True))
            bar.update(len(chunk))
    return summarise_em(run.samples(), [q.id for q in questions], seconds=time.perf_counter() - start)


def summarise_em(samples: Sequence[dict], order: Sequence[str] | None = None, seconds: float | None = None) -> dict:
    """Overall and per-question counts, rate with Wilson interval, and timings."""
    ids = list(order or dict.fromkeys(s["id"] for s in samples))
    per_question = {qid: em_counts([s for s in samples if s["id"] == qid]) for qid in ids}
    summary = em_counts(samples)
    summary["per_question"] = per_question
    summary["timing"] = _timing(samples, seconds)
    return summary


def _timing(samples: Sequence[dict], seconds: float | None) -> dict:
    gen = [s["gen_seconds"] for s in samples if s.get("gen_seconds") is not None]
    jud = [s["judge_seconds"] for s in samples if s.get("judge_seconds") is not None]
    return {
        "gen_seconds_per_answer": sum(gen) / len(gen) if gen else None,
        "judge_seconds_per_answer": sum(jud) / len(jud) if jud else None,
        "wall_seconds_this_invocation": seconds,
    }


def conscience_view(reviewer, samples: Sequence[dict]) -> dict:
    """The model's own conscience (its frozen copy's verdict) on EM answers: the share it flags
    and its mean score. More sensitive than the 0–100 judge when the judge is a small model;
    but the conscience arm was trained against this same verdict, so read its row with care."""
    from ..verdict import ReviewItem

    items = [ReviewItem(s["prompt"], s["answer"]) for s in samples if str(s.get("answer") or "").strip()]
    verdicts = reviewer.review(items) if items else []
    n, flagged = len(verdicts), sum(v.flagged for v in verdicts)
    return {"n": n, "flagged": flagged, "flagged_share": flagged / n if n else None,
            "mean_score": sum(v.score for v in verdicts) / n if n else None,
            "verdict": verdicts[0].kind if verdicts else None}
