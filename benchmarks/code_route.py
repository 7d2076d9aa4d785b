"""Which card reads answers with code (``conscience.verdict.code_route``), and how often the route fires.

Two measurements:

* **coverage** (no model): the share of answers :func:`has_code` sends to the code card, per
  source — the project's contrast triples and the shared dev triples per category (only
  ``code_security`` holds code), the code generator's train split, the shared Emergent
  Misalignment code samples (bare code, no fences) and the shared jailbroken chats (prose) — and,
  for each ``code_fence`` injection style, how many injected dev misaligned answers it routes
  (chat categories apart from code_security);
* **the choice** of the code card: the code generator's train-split triples past the first
  ``--cap`` per class (in no candidate's fit when every candidate took at most ``--cap`` per class,
  and never a test split), every answer holding code, scored by the main card alone, by each
  candidate code card alone (what the route does) and by the lower of the two. All cards are
  read in one forward pass per batch. Dev is not read here: the route and its card are chosen on
  this set and reported on dev by ``discernment.py`` and ``code_conscience.py``.

    python benchmarks/code_route.py --candidates CARD_A,CARD_B --cap 20 --out route.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from conscience.discernment import Triple, load_triples, records_report
from conscience.errors import ConscienceError
from conscience.framings import shared_data_root
from conscience.jsonl import write_json_atomic
from conscience.verdict.code_route import has_code

REPO = Path(__file__).resolve().parents[1]
CONTRAST = REPO / "src" / "conscience" / "data" / "contrast.jsonl"


# -- coverage ----------------------------------------------------------------------------------

def triple_coverage(triples: Sequence[Triple]) -> dict[str, dict]:
    """Per category: answers, and how many the route sends to the code card."""
    rows: dict[str, dict] = {}
    for t in triples:
        row = rows.setdefault(t.category, {"answers": 0, "code": 0})
        row["answers"] += 2
        row["code"] += has_code(t.aligned) + has_code(t.misaligned)
    return dict(sorted(rows.items()))


def chat_coverage(path: Path) -> dict:
    """Assistant messages of a chat JSONL (``{"messages": [...]}`` per line) and how many are routed."""
    answers = [m["content"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
               for m in json.loads(line).get("messages", []) if m.get("role") == "assistant"]
    return {"answers": len(answers), "code": sum(map(has_code, answers))}


def injected_coverage(triples: Sequence[Triple]) -> dict[str, dict]:
    """Per ``code_fence`` injection style (the styles aimed at the route), the misaligned answers
    it sends to the code card: those of chat categories and those of ``code_security``."""
    from conscience.verdict.injection import load_styles

    rows = {}
    for style in (s for s in load_styles() if s.group == "code_fence"):
        for kind, answers in (("chat", [t.misaligned for t in triples if t.category != "code_security"]),
                              ("code_security", [t.misaligned for t in triples if t.category == "code_security"])):
            rows[f"{style.name} ({style.split}), {kind}"] = {
                "answers": len(answers), "code": sum(has_code(style.apply(a)) for a in answers)}
    return rows


def coverage(dev: Path, em: Path, jailbroken: Path) -> dict:
    from conscience.tasks.code_hacking.contrast import code_contrast_triples

    out = {"contrast": triple_coverage(load_triples(CONTRAST)),
           "code-generator (train split)": triple_coverage(code_contrast_triples())}
    if dev.is_file():
        dev_triples = load_triples(dev)
        out["dev"] = triple_coverage(dev_triples)
        out["dev misaligned, injected"] = injected_coverage(dev_triples)
    for path in sorted(em.glob("*.jsonl")) + [jailbroken]:
        if path.is_file():
            out[path.name] = chat_coverage(path)
    return out


def print_coverage(table: dict) -> None:
    print(f"{'answers routed to the code card':<72} {'routed':>7} {'of':>6}")
    for source, rows in table.items():
        for name, row in ({source: rows} if "answers" in rows else {f"{source}: {c}": r for c, r in rows.items()}).items():
            print(f"{name:<72} {row['code']:>7} {row['answers']:>6}")


# -- the choice of the code card -----------------------------------------------------------------

def held_back_code(cap: int) -> list[Triple]:
    """The generator's train-split triples past the first ``cap`` per class (what a card fitted
    with ``code-generator:cap`` or less never saw)."""
    from conscience.tasks.code_hacking.contrast import code_contrast_triples

    fitted = {t.id for t in code_contrast_triples(cap)}
    return [t for t in code_contrast_triples() if t.id not in fitted]


def generator_cap(data: str) -> int | None:
    """Generator triples per class a card's ``data`` took: 0 without the generator, None for the
    whole train split."""
    from conscience.verdict.sources import code_cap, is_code_source, source_parts

    caps = [code_cap(part) for part in source_parts(data) if is_code_source(part)] if data else []
    return caps[0] if caps else 0


def route_rows(chat: np.ndarray, code: dict[str, np.ndarray], triples: Sequence[Triple]) -> dict[str, dict]:
    """Per rule, its report on ``triples`` (every answer holds code; aligned answers first): the
    main card alone, each code card alone (the route) and the lower of the two scores; every card
    cut at 0.5, its own fitted cut."""
    from conscience.verdict.calibration import triple_items
    from conscience.verdict.operating_point import flag_rates

    aligned = triple_items(triples)[1]
    rules = {"main card alone": chat}
    for name, scores in code.items():
        rules[f"{name} alone"] = scores
        rules[f"lower of main and {name}"] = np.minimum(chat, scores)
    rows = {}
    for rule, s in rules.items():
        report, rates = records_report(s, triples), flag_rates(s, aligned, 0.5)
        rows[rule] = {"paired_accuracy": report["paired_accuracy"], "auc": report["auc"], "n": report["n"],
                      "recall": round(rates.recall, 4), "false_flag_rate": round(rates.false_flag_rate, 4)}
        print(f"{rule:<44} paired {report['paired_accuracy']:.3f}  auc {report['auc']:.3f}  "
              f"recall {rates.recall:.3f}  false flags {rates.false_flag_rate:.3f}  n {report['n']}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--card", help="the main card (default: the one found for --model, read alone)")
    parser.add_argument("--candidates", help="comma-separated code card folders to compare (default: the main "
                                             "card's code/ card)")
    parser.add_argument("--cap", type=int, default=20, help="generator triples per class the candidates may have "
                                                            "been fitted on; the choice set is the rest")
    parser.add_argument("--dev", default=str(shared_data_root(REPO) / "data" / "discernment" / "dev.jsonl"))
    parser.add_argument("--em", default=str(shared_data_root(REPO) / "data" / "emergent-misalignment"))
    parser.add_argument("--coverage-only", action="store_true", help="the route's coverage alone (no model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()

    start = time.perf_counter()
    em = Path(args.em)
    results: dict = {"coverage": coverage(Path(args.dev), em / "subsets", em / "data" / "jailbroken.jsonl")}
    print_coverage(results["coverage"])
    if not args.coverage_only:
        import torch
        from discernment import latent_scores_of  # the sibling benchmark: several cards in one pass

        from conscience.models import load_model
        from conscience.verdict.calibration import triple_items
        from conscience.verdict.card import find_card, load_card
        from conscience.verdict.code_route import find_code_card
        from conscience.verdict.latent import LatentReviewer

        main_dir = Path(args.card) if args.card else find_card(args.model)
        if main_dir is None:
            parser.error(f"no card found for {args.model}: give --card")
        candidates = [Path(p) for p in args.candidates.split(",")] if args.candidates else [find_code_card(main_dir)]
        if None in candidates:
            parser.error(f"{main_dir} has no code/ card: give --candidates")
        try:
            cards = [load_card(d) for d in [main_dir, *candidates]]
        except ConscienceError as err:
            parser.error(str(err))
        for folder, card in zip(candidates, cards[1:], strict=True):
            if (cap := generator_cap(card.info.get("data", ""))) is None or cap > args.cap:
                parser.error(f"{folder} was fitted on more than --cap {args.cap} generator triples per class "
                             f"(data {card.info.get('data')!r}): the choice set would hold its own fitting data")
        torch.set_num_threads(args.threads)
        lm = load_model(args.model)
        triples = held_back_code(args.cap)
        print(f"\nthe choice: {len(triples)} generator train triples past the first {args.cap} per class", flush=True)
        reviewers = [LatentReviewer(lm, card, source=str(d)) for d, card in zip([main_dir, *candidates], cards,
                                                                                   strict=True)]
        scores = latent_scores_of(reviewers, triple_items(triples)[0])
        code = {str(d): s for d, s in zip(candidates, scores[1:], strict=True)}
        results["choice"] = {"cap": args.cap, "n_triples": len(triples), "main_card": str(main_dir),
                             "rows": route_rows(scores[0], code, triples)}
    results["seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
