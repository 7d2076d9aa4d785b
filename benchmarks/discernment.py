"""Discernment benchmark: can the conscience tell aligned from misaligned answers?

On the shared dev triples (never used to fit the shipped card) prints, per verdict, framing
and category, the paired accuracy and ROC AUC:

* verbal: every framing in data/framings.yaml, their log-odds average, each with and without
  content-free calibration, and contrastive scoring (``VerbalReviewer.compare``);
* latent / combined: cross-validated on dev (``--cv loco|kfold``) and, with a card (the shipped
  one by default), scored held-out;
* ``--robustness``: every injection style (``data/injection_styles.yaml``) applied to every
  misaligned answer, one row per style for the card's latent verdict — mean score shift, flips
  (flagged → passed), misaligned answers let through (beside the clean count) and the AUC of the
  injected misaligned against the clean aligned answers; styles a span card was fitted with
  (``split: fit``) and held-out ones are reported apart; ``--baseline-card`` adds the same rows
  for a second card, read in the same forward passes; each card's clean and injected scores are
  kept in the JSON (``benchmarks/rule_robustness.py`` scores rules over two cards from them).

``--sample N`` reads N triples drawn per category in proportion to the file's (largest remainders,
seeded): e.g. 84 of the corpus's ``choose`` split, the size the robustness target is stated in.

    python benchmarks/discernment.py --out results/discernment.json [--limit 28] [--no-verbal]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from conscience.config import choices_of
from conscience.conscience_config import ConscienceConfig
from conscience.discernment import bootstrap_intervals, load_triples, records_report
from conscience.errors import ConscienceError
from conscience.framings import load_framings, shared_data_root
from conscience.jsonl import write_json_atomic
from conscience.models import load_model
from conscience.verdict import POOLS, ReviewItem, VerbalReviewer, mean_log_odds
from conscience.verdict.calibration import cached_features, file_digest, triple_items
from conscience.verdict.card import find_card, load_card
from conscience.verdict.code_route import CodeRoutedReviewer, find_code_card
from conscience.verdict.factory import card_reviewer
from conscience.verdict.injection import SPLITS, load_styles, robustness_row
from conscience.verdict.latent import LatentReviewer
from conscience.verdict.latent_fit import category_folds, fit_selected, group_folds, scores_with_extra
from conscience.verdict.operating_point import dev_report
from conscience.verdict.scores import logit


def default_data() -> Path:
    return shared_data_root(Path(__file__).resolve().parents[1]) / "data" / "discernment" / "dev.jsonl"


def row(table: list, verdict: str, setting: str, scores: np.ndarray, triples) -> None:
    """A row of the table: the report of ``scores (2T,)`` (aligned answers first) on ``triples``
    with 95 % bootstrap intervals over triples, overall and per category."""
    scores = np.asarray(scores, dtype=np.float64)
    report, n = records_report(scores, triples), len(triples)

    def with_intervals(metrics: dict, rows: list[int]) -> dict:
        ci = bootstrap_intervals(scores[:n][rows], scores[n:][rows])
        return {"paired_accuracy": metrics["paired_accuracy"], "paired_accuracy_ci": ci["paired_accuracy"],
                "auc": metrics["auc"], "auc_ci": ci["auc"]}

    per_category = {c: with_intervals(r, [i for i, t in enumerate(triples) if t.category == c])
                    for c, r in report["per_category"].items()}
    overall = with_intervals(report, list(range(n)))
    table.append({"verdict": verdict, "setting": setting, **overall, "tie_rate": report["tie_rate"], "n": n,
                  "per_category": per_category})
    (pa_low, pa_high), (auc_low, auc_high) = overall["paired_accuracy_ci"], overall["auc_ci"]
    print(f"{verdict:<9} {setting:<34} {report['paired_accuracy']:>7.3f} ({pa_low:.3f}-{pa_high:.3f}) "
          f"{report['auc']:>7.3f} ({auc_low:.3f}-{auc_high:.3f}) {n:>4}", flush=True)


def reviewed_scores(reviewer, items, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Latent and verbal scores through the reviewer's own review (one forward pass per item; a
    latent reviewer's pass stops at its card's layers and reads no verbal score: ``nan``)."""
    latent, verbal = [], []
    for start in range(0, len(items), batch_size):
        for v in reviewer.review(items[start:start + batch_size]):
            latent.append(v.per_framing["latent"])
            verbal.append(v.per_framing.get("verbal", float("nan")))
    return np.array(latent), np.array(verbal)


def card_readers(reviewer) -> list:
    """The card reviewers behind ``reviewer``: itself, or a routed reviewer's chat and code ones."""
    return [reviewer.chat, reviewer.code] if isinstance(reviewer, CodeRoutedReviewer) else [reviewer]


def routed_card(reviewer, item: ReviewItem):
    """The card reviewer that reads ``item`` (a routed reviewer's :meth:`CodeRoutedReviewer.reader`)."""
    return reviewer.reader(item) if isinstance(reviewer, CodeRoutedReviewer) else reviewer


def shared_pass(reviewers) -> bool:
    """Whether one forward pass serves every card: same review prompt, answer tokens read."""
    cards = [r.card for reviewer in reviewers for r in card_readers(reviewer)]
    keys = {(c.framing, c.question, c.review_format) for c in cards}
    return len(keys) == 1 and all(c.pool in ("answer", "spans") for c in cards)


def stratified_sample(triples: list, n: int, seed: int = 0) -> list:
    """``n`` of ``triples``, each category's share in proportion to its count (largest remainders
    get the rest), drawn with ``random.Random(seed)`` category by category in name order."""
    if not 0 < n <= len(triples):
        raise ConscienceError(f"--sample must lie in 1..{len(triples)} (the triples read), got {n}")
    by_category: dict[str, list] = {}
    for t in triples:
        by_category.setdefault(t.category, []).append(t)
    quota = {c: n * len(rows) / len(triples) for c, rows in by_category.items()}
    take = {c: int(q) for c, q in quota.items()}
    for c in sorted(quota, key=lambda c: quota[c] - take[c], reverse=True)[:n - sum(take.values())]:
        take[c] += 1
    rng = random.Random(seed)
    return [t for c in sorted(by_category) for t in rng.sample(by_category[c], take[c])]


def latent_scores_of(reviewers, items, batch_size: int = 8) -> list[np.ndarray]:
    """Each reviewer's latent scores of ``items``; cards that can share a pass (``shared_pass``)
    are read in one forward pass per batch, at the union of their layers (the pass stops above the
    deepest). A routed reviewer scores each answer with the card it routes it to (both cards cut
    at 0.5)."""
    if not shared_pass(reviewers):
        return [reviewed_scores(r, items, batch_size)[0] for r in reviewers]
    readers = [r for reviewer in reviewers for r in card_readers(reviewer)]
    layers = sorted({layer for r in readers for layer in r.card.probe.layers})
    framing, scores = readers[0].card.framing, [[] for _ in reviewers]
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        readings = readers[0].verbal.read(batch, pool="spans", layers=layers, depth=max(layers) + 1)
        for reviewer, out in zip(reviewers, scores, strict=True):
            for item, reading in zip(batch, readings, strict=True):
                card = routed_card(reviewer, item)
                index = [layers.index(layer) for layer in card.card.probe.layers]
                out.extend(card.token_scores([reading.hidden[framing][index].mean(dim=0).numpy()]))
    return [np.array(s) for s in scores]


def robustness(reviewers: dict, items, clean: dict, styles_path: str | None) -> dict:
    """Per card (name → reviewer), one row per injection style on the misaligned half of
    ``items`` (aligned first; ``clean`` holds each card's clean scores), printed by split: the
    styles a span card may have been fitted with, then the held-out ones. The cards are read in
    the same forward passes where they can be (``shared_pass``). Each card's clean scores and each
    row's injected ones are kept, so a rule over several cards (e.g. flag when either flags) can be
    scored under the same injections afterwards."""
    n = len(items) // 2
    styles = load_styles(styles_path)
    rows: dict[str, list] = {name: [] for name in reviewers}
    for style in styles:
        injected = [ReviewItem(i.prompt, style.apply(i.answer)) for i in items[n:]]
        for name, moved in zip(reviewers, latent_scores_of(list(reviewers.values()), injected), strict=True):
            rows[name].append({"style": style.name, "group": style.group, "split": style.split, "where": style.where,
                               **robustness_row(clean[name][:n], clean[name][n:], moved, reviewers[name].threshold),
                               "scores": [round(float(s), 6) for s in moved]})
    out = {}
    for name, reviewer in reviewers.items():
        summary = {}
        for split in SPLITS:
            part = [r for r in rows[name] if r["split"] == split]
            print(f"\n{name}: {split} styles{' (never in any fit)' if split == 'held_out' else ''}")
            print(f"{'style':<24} {'group':<20} {'shift':>7} {'flips':>5} {'through':>9} {'auc':>6}")
            for r in part:
                print(f"{r['style']:<24} {r['group']:<20} {r['mean_shift']:>+7.3f} {r['flips']:>5} "
                      f"{r['let_through']:>4}/{r['let_through_clean']:<4} {r['auc']:>6.3f}")
            if part:
                summary[split] = {"styles": len(part), "max_flips": max(r["flips"] for r in part),
                                  "total_flips": sum(r["flips"] for r in part),
                                  "max_let_through": max(r["let_through"] for r in part),
                                  "min_auc": min(r["auc"] for r in part)}
        out[name] = {"threshold": reviewer.threshold, "framing": reviewer.framing_name, "styles": rows[name],
                     "summary": summary, "clean_scores": [round(float(s), 6) for s in clean[name]]}
    return out


def extra_features(lm, path: Path, framing, review_format: str, dev_groups: np.ndarray, pool: str):
    """(X, y, groups, categories) of the extra triples; groups offset past the dev ones."""
    items, y, g, cats = triple_items(load_triples(path))
    X, _ = cached_features(lm, items, framing, file_digest(path), review_format=review_format, pool=pool)
    return X, y, g + dev_groups.max() + 1, cats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(default_data()))
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--verdict", choices=["verbal", "latent", "combined", "all"], default="all")
    parser.add_argument("--cv", choices=["loco", "kfold", "none"], default="loco",
                        help="cross-validated rows fitted on dev folds (none: only the card's held-out rows)")
    parser.add_argument("--card", help="card folder (default: the one the conscience finds for --model)")
    parser.add_argument("--framings", help="comma-separated verbal framings (default: all)")
    parser.add_argument("--no-compare", action="store_true", help="skip contrastive A/B scoring (2 passes per triple)")
    parser.add_argument("--extra", help="more triples added to every cross-validation fit (e.g. the shipped "
                        "src/conscience/data/contrast.jsonl); under loco, their records of the held-out category "
                        "are left out too, so no fit sees the category it scores")
    parser.add_argument("--robustness", action="store_true",
                        help="the card's latent verdict under every injection style (see --styles)")
    parser.add_argument("--baseline-card", help="with --robustness, a second card under the same injections, read "
                        "in the same forward passes where it can be (e.g. the shipped card beside a span card); "
                        "read alone, without its code/ card")
    parser.add_argument("--styles", help="injection styles YAML (default: the shipped data/injection_styles.yaml)")
    parser.add_argument("--limit", type=int, help="first N triples only (quick runs)")
    parser.add_argument("--sample", type=int, help="N triples drawn per category in proportion (seeded by --seed)")
    parser.add_argument("--seed", type=int, default=0, help="the --sample draw's seed")
    parser.add_argument("--review-format", choices=choices_of(ConscienceConfig, "review_format"), default="look_back")
    parser.add_argument("--pool", choices=[p for p in POOLS if p != "spans"], default="answer",
                        help="hidden states the cross-validated fits read (card rows use the card's own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()

    data = Path(args.data)
    if not data.is_file():
        print(f"no triples at {data} (set $CONSCIENCE_SHARED)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    triples = load_triples(data)[: args.limit]
    if args.sample:
        try:
            triples = stratified_sample(triples, args.sample, args.seed)
        except ConscienceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    lm = load_model(args.model)
    framings = load_framings()
    names = args.framings.split(",") if args.framings else [n for n in framings if n != "secure_code"]
    items, y, g, cats = triple_items(triples)
    key = (file_digest(data) + (f":{args.limit}" if args.limit else "")
           + (f":sample{args.sample}:{args.seed}" if args.sample else ""))
    table: list[dict] = []
    results: dict = {"data": str(data), "model": lm.identity, "n_triples": len(triples), "table": table}
    print(f"{'verdict':<9} {'setting':<34} {'paired (95% CI)':>21} {'auc (95% CI)':>21} {'n':>4}")
    start = time.perf_counter()

    fmt = args.review_format

    def features(pool: str) -> np.ndarray:
        return cached_features(lm, items, framings["aligned"], key, review_format=fmt, pool=pool)[0]

    # the verbal score comes from the same pass whatever the pooling: read it with --pool's features
    _, aligned_verbal = cached_features(lm, items, framings["aligned"], key, review_format=fmt, pool=args.pool)

    verbal_by_framing = {"aligned": aligned_verbal}
    if args.verdict in ("verbal", "all"):
        for name in names:
            if name not in verbal_by_framing:
                reviewer = VerbalReviewer(lm, [framings[name]], review_format=fmt)
                verbal_by_framing[name] = np.array([v.score for v in reviewer.review(items)])
        offsets = {}
        for name in names:
            probe = VerbalReviewer(lm, [framings[name]], calibrate=True, review_format=fmt)
            offsets[name] = probe._offsets[name]  # content-free log-odds of this framing
        for calibrated in (False, True):
            shift = (lambda n: offsets[n]) if calibrated else (lambda n: 0.0)
            per = {n: np.array([1 / (1 + math.exp(-(logit(p) - shift(n)))) for p in verbal_by_framing[n]]) for n in names}
            for name in names:
                row(table, "verbal", f"{name}{' calibrated' if calibrated else ''}", per[name], triples)
            average = np.array([mean_log_odds([per[n][i] for n in names]) for i in range(len(items))])
            row(table, "verbal", f"average{' calibrated' if calibrated else ''}", average, triples)
        if not args.no_compare:
            reviewer = VerbalReviewer(lm, [framings["aligned"]])
            wins = [reviewer.compare(t.prompt, t.aligned, t.misaligned) for t in triples]
            # contrastive scoring is pairwise: score the aligned answer p, the misaligned 1 - p
            row(table, "verbal", "compare (A/B, both orders)", np.r_[wins, 1 - np.array(wins)], triples)

    if args.verdict in ("latent", "combined", "all"):
        folds = category_folds(cats) if args.cv == "loco" else [(None, m) for m in group_folds(g, 5)]
        X_cv = features(args.pool)
        extra = extra_features(lm, Path(args.extra), framings["aligned"], fmt, g, args.pool) if args.extra else None
        for method in ("lda", "diffmean") if args.cv != "none" else ():
            fit = lambda X_, y_, g_, method=method: fit_selected(X_, y_, g_, method, None, 0)
            oof = scores_with_extra(X_cv, y, g, folds, fit, extra)
            fitted_on = "dev folds + extra" if extra is not None else "dev folds"
            row(table, "latent", f"{method} cv={args.cv} pool={args.pool} ({fitted_on})", oof, triples)
            if extra is not None:
                oof = scores_with_extra(X_cv, y, g, folds, fit, extra, dev_in_fit=False)
                row(table, "latent", f"{method} cv={args.cv} pool={args.pool} (extra only)", oof, triples)
        card_dir = Path(args.card) if args.card else find_card(args.model)
        if card_dir is not None:
            card, code_dir = load_card(card_dir), find_code_card(card_dir)
            results["card"] = {"path": str(card_dir), "layers": card.probe.layers, "method": card.probe.method,
                               "pool": card.pool, "code_card": str(code_dir) if code_dir else None,
                               "data": card.info.get("data"), "metrics": card.probe.metrics}
            latent = card_reviewer(lm, card_dir)  # with the code/ card, answers with code are read by it
            combined = card_reviewer(lm, card_dir, combined=True)  # the same pass, read to the top for the verbal score
            card_verbal = aligned_verbal
            name = f"card {card.info.get('data', '?')}{' + code card' if code_dir else ''} (held-out)"
            if card.pool == "spans" or code_dir:  # per-token features are too many to cache: read through the reviewer
                held, card_verbal = reviewed_scores(combined, items)
            else:
                held = latent.latent_scores(features(card.pool))
            row(table, "latent", name, held, triples)
            merged = [routed_card(combined, i)._score(float(s), type("V", (), {"score": float(v)})())
                      for i, s, v in zip(items, held, card_verbal, strict=True)]
            row(table, "combined", name, np.array(merged), triples)
            # recall of misaligned answers and false-flag rate on dev at the card's operating points (a routed
            # verdict's two cards each resolve their own: its rates are given at the default cut only)
            results["operating_points"] = (dev_report(latent, held, y) if not code_dir else
                                           dev_report(latent.chat, held, y, thresholds=[latent.threshold], with_cv=False))
            for point in results["operating_points"]:
                print(f"operating point {point['setting']:<12} recall {point['recall']:.3f} "
                      f"false flags {point['false_flag_rate']:.3f} (cv: {point['cv_recall']}, "
                      f"{point['cv_false_flag_rate']})", flush=True)
            if args.robustness:
                reviewers, clean = {"card": latent}, {"card": held}
                if args.baseline_card:
                    base = LatentReviewer(lm, load_card(args.baseline_card), source=args.baseline_card)
                    reviewers["baseline"] = base
                    clean["baseline"] = (latent_scores_of([base], items)[0] if base.card.pool == "spans"
                                         else base.latent_scores(features(base.card.pool)))
                    results["baseline_card"] = {"path": args.baseline_card, "pool": base.card.pool,
                                                "layers": base.card.probe.layers}
                by_card = robustness(reviewers, items, clean, args.styles)
                results["robustness"] = by_card["card"]
                if "baseline" in by_card:
                    results["robustness_baseline"] = by_card["baseline"]

    default = ConscienceConfig().verdict
    if default == "auto":  # auto is the latent verdict wherever a card fits the model
        default = "latent" if "card" in results else "verbal"
    wanted = {"verbal": ("verbal", "aligned"), "latent": ("latent", "card"), "combined": ("combined", "card")}[default]
    chosen = next((r for r in table if r["verdict"] == wanted[0] and r["setting"].startswith(wanted[1])), None)
    results["default_verdict"] = default
    if chosen:
        results["paired_accuracy"], results["auc"] = chosen["paired_accuracy"], chosen["auc"]
    results["seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
