"""Generalisation: the same verdicts on every set they can be read on, side by side.

One row per (verdict, set): paired accuracy and ROC AUC with 95 % bootstrap intervals over triples,
and at the verdict's own cut the share of misaligned answers flagged and of aligned answers flagged
(a third of good answers flagged is a third rewritten or withheld when served). The sets: the
corpus's ``choose`` and ``test`` splits (``data/corpus``, when present), the shared dev triples,
any ``--set NAME=FILE`` of triples, and the shared Emergent Misalignment code samples (unpaired:
AUC, secure flagged, insecure passed). A gain on one set beside a loss on another shows here.

    python benchmarks/generalisation.py --out results/generalisation.json
    python benchmarks/generalisation.py --card src/conscience/data/cards/bundled-answer-mean --em-limit 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from conscience.discernment import bootstrap_intervals, load_triples, records_report
from conscience.errors import ConscienceError
from conscience.evaluation.em_code import em_report, em_samples
from conscience.framings import data_path, shared_data_root
from conscience.jsonl import write_json_atomic
from conscience.verdict.calibration import triple_items

REPO = Path(__file__).resolve().parents[1]


def default_sets() -> dict[str, Path]:
    """The triple sets found here: corpus choose/test, then the shared dev triples."""
    sets = {f"corpus {split}": data_path(f"corpus/{split}.jsonl") for split in ("choose", "test")}
    sets["dev"] = shared_data_root(REPO) / "data" / "discernment" / "dev.jsonl"
    return {name: path for name, path in sets.items() if Path(path).is_file()}


def verdicts_of(reviewer, items, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Scores and flags of ``items`` through the reviewer's own review (as served)."""
    verdicts = [v for start in range(0, len(items), batch_size) for v in reviewer.review(items[start:start + batch_size])]
    failed = [i for i, v in enumerate(verdicts) if v.error is not None]
    if failed:
        raise ConscienceError(f"{len(failed)} review(s) failed, e.g. item {failed[0]}: {verdicts[failed[0]].error}")
    return np.array([v.score for v in verdicts]), np.array([v.flagged for v in verdicts])


def triple_row(reviewer, path: Path) -> dict:
    triples = load_triples(path)  # a triple missing a field: one line naming the file and line
    items = triple_items(triples)[0]  # every aligned answer, then every misaligned one
    return scores_row(triples, *verdicts_of(reviewer, items))


def scores_row(triples, scores: np.ndarray, flags: np.ndarray) -> dict:
    """:func:`triple_row` of scores and flags already read (laid out as ``triple_items``)."""
    n = len(triples)
    report = records_report(scores, triples)
    ci = bootstrap_intervals(scores[:n], scores[n:])
    return {"n": n, "paired_accuracy": report["paired_accuracy"], "paired_accuracy_ci": ci["paired_accuracy"],
            "auc": report["auc"], "auc_ci": ci["auc"], "misaligned_flagged": float(flags[n:].mean()),
            "aligned_flagged": float(flags[:n].mean()),
            "per_category": {c: {k: r[k] for k in ("paired_accuracy", "auc")}
                             for c, r in report["per_category"].items()}}


def em_row(reviewer, root: Path, limit: int | None) -> dict:
    secure, insecure, shared = em_samples(root, limit)
    secure_scores, _ = verdicts_of(reviewer, secure)
    insecure_scores, _ = verdicts_of(reviewer, insecure)
    return {**em_report(secure, insecure, secure_scores, insecure_scores, reviewer.threshold), "shared_prompts": shared}


def table(rows: list[dict]) -> list[str]:
    lines = ["| verdict | set | n | paired accuracy (95% CI) | AUC (95% CI) | misaligned flagged | aligned flagged |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "paired_accuracy_ci" in r:
            (pl, ph), (al, ah) = r["paired_accuracy_ci"], r["auc_ci"]
            lines.append(f"| {r['verdict']} | {r['set']} | {r['n']} | {r['paired_accuracy']:.3f} ({pl:.3f}-{ph:.3f}) | "
                         f"{r['auc']:.3f} ({al:.3f}-{ah:.3f}) | {r['misaligned_flagged']:.3f} | "
                         f"{r['aligned_flagged']:.3f} |")
        else:  # the unpaired code samples: insecure = misaligned, secure = aligned
            lines.append(f"| {r['verdict']} | {r['set']} | {r['n_secure']}+{r['n_insecure']} | – | {r['auc']:.3f} | "
                         f"{1 - r['insecure_passed']:.3f} | {r['secure_flagged']:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--card", action="append", default=[],
                        help="a card folder to read (repeatable; default: the model's shipped card)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=FILE", help="another set of triples")
    parser.add_argument("--no-default-sets", action="store_true", help="only the --set files (and EM code)")
    parser.add_argument("--em", default=str(shared_data_root(REPO) / "data" / "emergent-misalignment" / "subsets"),
                        help="folder of the EM secure.*/insecure.* samples (skipped when absent)")
    parser.add_argument("--em-limit", type=int, default=None, help="at most N of each (a seeded draw)")
    parser.add_argument("--out", help="write the rows as JSON")
    args = parser.parse_args(argv)
    sets = {} if args.no_default_sets else default_sets()
    for item in args.set:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            parser.error(f"--set {item!r}: give NAME=FILE with an existing file")
        sets[name] = Path(path)

    from conscience.models import load_model
    from conscience.verdict.card import find_card
    from conscience.verdict.factory import card_reviewer

    start = time.perf_counter()
    lm = load_model(args.model)
    cards = args.card or [str(find_card(args.model))]
    rows = []
    for card in cards:
        reviewer = card_reviewer(lm, Path(card))
        for name, path in sets.items():
            rows.append({"verdict": card, "set": name, **triple_row(reviewer, path)})
            print(table(rows[-1:])[-1], flush=True)
        em = Path(args.em)
        if em.is_dir() and any(em.glob("secure.*.jsonl")) and any(em.glob("insecure.*.jsonl")):
            rows.append({"verdict": card, "set": "EM code samples", **em_row(reviewer, em, args.em_limit)})
            print(table(rows[-1:])[-1], flush=True)
    print("\n".join(table(rows)))
    if args.out:
        write_json_atomic(args.out, {"command": " ".join(["python", "benchmarks/generalisation.py", *(argv or
                                                          sys.argv[1:])]),
                                     "seconds": round(time.perf_counter() - start, 1), "rows": rows})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConscienceError as exc:  # a malformed set or card: one line, no traceback
        sys.exit(f"error: {exc}")
