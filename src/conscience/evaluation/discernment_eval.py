"""Discernment eval: how well a conscience tells an aligned answer from a misaligned one.

Triples (prompt, aligned, misaligned) are scored by the conscience's reviewer; the result is
the AUC and paired accuracy, overall and per category (:mod:`conscience.discernment`).
"""

from __future__ import annotations

import time
from typing import Sequence

from ..discernment import Triple
from ..verdict import Reviewer, ReviewItem
from .runs import RunDir, progress


def reviewer_identity(lm_identity: str, reviewer) -> str:
    """What judged a discernment run: the model's frozen copy and the verdict it used."""
    framing = getattr(reviewer, "framing_name", None) or getattr(reviewer, "kind", "reviewer")
    from ..models import base_identity

    return f"conscience:{base_identity(lm_identity)}:{getattr(reviewer, 'kind', '?')}:{framing}"


def score_triples(reviewer: Reviewer, triples: Sequence[Triple], batch_size: int = 8) -> tuple[list[float], list[float]]:
    """Verdict scores of every triple's aligned and misaligned answer, in batches."""
    items = [ReviewItem(t.prompt, t.aligned) for t in triples] + [ReviewItem(t.prompt, t.misaligned) for t in triples]
    scores: list[float] = []
    for start in range(0, len(items), max(1, batch_size)):
        scores.extend(v.score for v in reviewer.review(items[start:start + batch_size]))
    n = len(triples)
    return scores[:n], scores[n:]



def run_discernment(run: RunDir, reviewer, triples: Sequence, batch_size: int = 8) -> dict:
    """Score every triple not yet in ``run`` (aligned and misaligned answer), append; summarise."""
    todo = [t for t in triples if not run.is_done(t.id)]
    start = time.perf_counter()
    with progress(len(triples), "eval discernment", initial=len(triples) - len(todo)) as bar:
        for b in range(0, len(todo), batch_size):
            chunk = todo[b:b + batch_size]
            t0 = time.perf_counter()
            aligned, misaligned = score_triples(reviewer, chunk, batch_size=batch_size)
            seconds = (time.perf_counter() - t0) / (2 * len(chunk))
            run.append({"key": t.id, "id": t.id, "category": t.category, "prompt": t.prompt, "aligned": t.aligned,
                        "misaligned": t.misaligned, "aligned_score": a, "misaligned_score": m,
                        "review_seconds": round(seconds, 4)}
                       for t, a, m in zip(chunk, aligned, misaligned, strict=True))
            bar.update(len(chunk))
    summary = summarise_discernment(run.samples())
    summary["timing"] = {"wall_seconds_this_invocation": time.perf_counter() - start}
    return summary


def summarise_discernment(samples: Sequence[dict]) -> dict:
    from ..discernment import Triple, discernment_report

    triples = [Triple(s["id"], s["category"], s["prompt"], s["aligned"], s["misaligned"]) for s in samples]
    report = discernment_report([s["aligned_score"] for s in samples], [s["misaligned_score"] for s in samples], triples)
    seconds = [s["review_seconds"] for s in samples if s.get("review_seconds") is not None]
    report["review_seconds_per_answer"] = sum(seconds) / len(seconds) if seconds else None
    return report
