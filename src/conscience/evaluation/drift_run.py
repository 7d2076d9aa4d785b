"""``conscience eval drift``: the drift measure of :mod:`conscience.evaluation.drift` on disk.

One folder per model: ``scores.json`` (per-triple gaps and A/B picks of the model and its base),
``summary.json`` and ``report.md``/``report.html``. With ``--checkpoints`` every checkpoint gets
``step-N/`` and the folder gets ``curve.json`` and the drift curve; the base is scored once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence, get_args

from ..choices import DriftSplit
from ..discernment import Triple, load_triples
from ..errors import ConscienceError
from ..jsonl import write_json_atomic
from ..log import log
from ..models import LoadedModel, base_identity
from .drift import DriftScores, drift_summary, score_base, score_drift
from .runs import step_of

DRIFT_TRIPLES = "drift_triples.jsonl"
#: ``select``: the odd-numbered triples of every theme, for choosing settings (the organism, λ);
#: ``report``: the even-numbered ones, for the numbers reported; ``all``: both.
SPLITS = get_args(DriftSplit)


def split_of(triple: Triple, index: int) -> str:
    """``select`` or ``report``: by the number that ends the id (``drift-wishes-07`` → 7, odd →
    select), else by the position in the file."""
    digits = re.findall(r"\d+", triple.id)
    number = int(digits[-1]) if digits else index + 1
    return "select" if number % 2 else "report"


def drift_triples(path: str | Path | None = None, limit: int | None = None,
                  categories: Sequence[str] | None = None, split: str = "all") -> list[Triple]:
    """The held-out triples (default: the shipped ``drift_triples.jsonl``): one split, optionally
    only some categories, then the first ``limit`` (the shipped file interleaves the themes, so
    a prefix keeps them balanced)."""
    from ..framings import data_path

    if split not in SPLITS:
        raise ConscienceError(f"split must be one of {list(SPLITS)}, got {split!r}")
    triples = load_triples(path or data_path(DRIFT_TRIPLES))
    if split != "all":
        triples = [t for i, t in enumerate(triples) if split_of(t, i) == split]
    if categories:
        unknown = sorted(set(categories) - {t.category for t in triples})
        if unknown:
            raise ConscienceError(f"categories {unknown} are not in {path or DRIFT_TRIPLES}")
        triples = [t for t in triples if t.category in set(categories)]
    return triples[:limit] if limit else triples


def task_accuracy(lm: LoadedModel, task_data: str | None, limit: int = 60) -> float | None:
    """Token accuracy on held-out task answers (the task metric beside the drift)."""
    if not task_data:
        return None
    from ..chat_data import load_conversations
    from .task_accuracy import task_token_accuracy

    return task_token_accuracy(lm, load_conversations(task_data)[:limit], 256)["token_accuracy"]


def measure(lm: LoadedModel, base: DriftScores, triples: Sequence[Triple], in_domain: Sequence[str] = (),
            ab: bool = True, batch_size: int = 16, task_data: str | None = None) -> tuple[dict, DriftScores]:
    """Summary and per-triple scores of one model against precomputed base scores."""
    scores = score_drift(lm, triples, ab=ab, batch_size=batch_size)
    summary = drift_summary(scores, base, [t.category for t in triples], in_domain)
    summary["task_token_accuracy"] = task_accuracy(lm, task_data)
    return summary, scores


def write_drift_run(out: Path, summary: dict, scores: DriftScores, base: DriftScores, model: str, base_id: str,
                    triples_source: str) -> dict:
    from .reports import write_report

    summary = {**summary, "model": model, "base": base_id, "triples": triples_source}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "scores.json", {"model": scores.to_dict(), "base": base.to_dict()})
    write_json_atomic(out / "summary.json", summary)
    write_report(out, "drift", {**summary, "judge": "none (forward passes: preference gap and A/B probe)"})
    return summary


def run_drift_eval(args, cfg) -> dict:
    """The command: load the model (and its base), score, write; a curve with ``--checkpoints``."""
    from ..models import is_adapter, load_model

    triples_source = (args.triples or f"shipped {DRIFT_TRIPLES}") + ("" if args.split == "all" else f" ({args.split} split)")
    triples = drift_triples(args.triples, args.limit, split=args.split)  # bad files fail before any model loads
    in_domain = [c.strip() for c in (args.in_domain or "").split(",") if c.strip()]
    known = {t.category for t in triples}
    if set(in_domain) - known:
        raise ConscienceError(f"--in-domain {sorted(set(in_domain) - known)}: no such category in the triples "
                              f"(categories: {', '.join(sorted(known))})")
    if known <= set(in_domain):
        raise ConscienceError("--in-domain names every category of the triples: nothing would measure emergent drift")
    if args.task_data and not Path(args.task_data).exists():
        raise ConscienceError(f"--task-data {args.task_data}: no such file")
    checkpoints = args.checkpoints or [None]
    for c in checkpoints:
        if c is not None and not Path(c).is_dir():
            raise ConscienceError(f"--checkpoints {c}: not a folder")
        if c is not None and not args.base and not is_adapter(c):  # the base would be the adapter-disabled model
            raise ConscienceError(f"--checkpoints {c} holds full weights, not an adapter: give --base SPEC")
    ab = not args.no_ab

    base_lm = load_model(args.base or cfg.model, dtype=cfg.dtype, threads=cfg.threads) if args.base else None
    if base_lm is None and not (cfg.adapter or args.checkpoints):
        raise ConscienceError("the drift of a model is measured against its base: give --adapter (the base is the "
                              "model without it), --checkpoints, or --base SPEC")
    base_scores, base_id = None, None
    if base_lm is not None:
        base_scores, base_id = score_drift(base_lm, triples, ab, args.batch_size), base_lm.identity
        del base_lm
    points = []
    last = None
    for i, ckpt in enumerate(checkpoints):
        lm = _load(cfg, ckpt)
        if base_scores is None:
            base_scores, base_id = score_base(lm, triples, ab, args.batch_size), base_identity(lm.identity)
        summary, scores = measure(lm, base_scores, triples, in_domain, ab, args.batch_size, args.task_data)
        out = Path(args.out) if ckpt is None else Path(args.out) / f"step-{step_of(ckpt, i)}"
        last = write_drift_run(out, summary, scores, base_scores, lm.identity, base_id, triples_source)
        log(f"drift {summary['drift']:+.4f} [{summary['drift_ci_low']:+.4f}, {summary['drift_ci_high']:+.4f}] "
            f"n={summary['n']}" + (f" ab={summary['ab_misaligned']:.3f} (base {summary['ab_misaligned_base']:.3f})"
                                   if ab else "") + f"; wrote {out}/summary.json")
        if ckpt is not None:
            points.append({"step": step_of(ckpt, i), **{k: summary[k] for k in (
                "drift", "drift_ci_low", "drift_ci_high", "ab_misaligned", "prefers_misaligned", "task_token_accuracy")}})
    if points:
        from .reports import write_report

        write_json_atomic(Path(args.out) / "curve.json", {"kind": "drift", "base": base_id, "points": points})
        write_report(args.out, "drift", {**last, "judge": "none (forward passes)"}, curve=points)
    return last


def _load(cfg, ckpt: str | None) -> LoadedModel:
    from ..models import load_weights, with_adapter

    if ckpt is None:
        return with_adapter(cfg.model, cfg.adapter, dtype=cfg.dtype, threads=cfg.threads)
    return load_weights(cfg.model, ckpt, dtype=cfg.dtype, threads=cfg.threads)

