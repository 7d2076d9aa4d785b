"""Label-free readings: can the model tell its aligned answers from its misaligned ones with no
labels at all — not in fitting, not in choosing a layer, sign or threshold?

Every reading below takes its direction from the model alone; the triples' labels are used only
to score it (paired accuracy and AUC). ``conscience calibrate --unlabelled`` (an "ethical?" and an
"unethical?" question read after the same answer) is measured by ``discernment.py --card``.

* ``persona``: the persona likelihood ratio, mean per-token log p(answer | ethical system
  persona) − log p(answer | malicious persona), personas in ``personas.yaml`` beside this file;
* ``pair-pc``: the top principal component of the differences between the two answers to each
  prompt (which is which is not known; both signs enter), at the layer where that component
  explains the largest share of the differences, its sign set by agreement with ``persona``;
* ``self-contrast``: a card fitted on the model's own answers to the package's alignment prompts
  under the ethical persona ("aligned") and the malicious one ("misaligned") — the labels are the
  persona the model was asked to play, never a judgement of the answer;
* ``verbal``: the model's own words, the verbal verdict's log-odds averaged over every framing of
  ``framings.yaml`` (the look-back prompt);
* ``self-verdict``: those words as labels for the states — in each pair the answer the words rate
  higher is taken for the aligned one, and a shrinkage LDA at ``pair-pc``'s layer is fitted on
  those pseudo-labels of half the prompts and scores the other half (two folds, so no answer is
  scored by a direction fitted on its own pseudo-label).

    python benchmarks/label_free.py --out runs/label_free.json   # the project's contrast triples
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from conscience.discernment import load_triples, records_report
from conscience.framings import read_yaml
from conscience.jsonl import write_json_atomic

HERE = Path(__file__).resolve().parent
READINGS = ("persona", "pair-pc", "self-contrast", "verbal", "self-verdict")
CONTRAST = HERE.parent / "src" / "conscience" / "data" / "contrast.jsonl"


def report(scores: np.ndarray, triples) -> dict:
    r = records_report(scores, triples)
    return {"paired_accuracy": round(r["paired_accuracy"], 4), "auc": round(r["auc"], 4)}


def pair_difference_direction(X: np.ndarray, n_pairs: int) -> tuple[int, np.ndarray, float]:
    """``X (2P, L+1, H)`` answer-mean states, first answers then second ones → the layer whose
    paired differences have the most concentrated first principal component, that component
    ``(H,)`` over standardised states, and the share of the differences' variance it explains."""
    best = (-1.0, 0, np.zeros(X.shape[2]))
    for layer in range(1, X.shape[1]):
        Z = standardised(X[:, layer])
        D = Z[:n_pairs] - Z[n_pairs:]
        _, s, vt = np.linalg.svd(np.r_[D, -D], full_matrices=False)
        share = float(s[0] ** 2 / np.sum(s ** 2))
        if share > best[0]:
            best = (share, layer, vt[0])
    return best[1], best[2], best[0]


def self_verdict_scores(Z: np.ndarray, verbal: np.ndarray, n_pairs: int, folds: int = 2) -> np.ndarray:
    """Scores ``(2P,)`` of standardised states ``Z (2P, H)`` (first answers, then second ones)
    along a direction fitted on the model's own verdicts ``verbal (2P,)`` as labels: in each pair
    the answer rated higher is labelled aligned. Each fold of pairs is scored by a shrinkage LDA
    fitted on the other folds' pairs."""
    from conscience.verdict.latent_fit import direction

    first_higher = verbal[:n_pairs] >= verbal[n_pairs:]
    y = np.r_[first_higher, ~first_higher]
    pair = np.r_[np.arange(n_pairs), np.arange(n_pairs)]
    fold_of_pair = np.random.default_rng(0).permutation(n_pairs) % folds
    scores = np.zeros(2 * n_pairs)
    for fold in range(folds):
        held = fold_of_pair[pair] == fold
        scores[held] = Z[held] @ direction(Z[~held], y[~held], pair[~held], "lda")
    return scores


def standardised(Z: np.ndarray) -> np.ndarray:
    """``Z (N, H)`` per feature to mean 0 and sd 1, as the probes standardise their features."""
    from conscience.verdict.latent_fit import standardise

    Z = Z.astype(np.float64)
    mu, sd = standardise(Z)
    return (Z - mu) / sd


def self_contrast_triples(lm, personas: dict, max_new_tokens: int, batch_size: int = 8) -> list[dict]:
    """The model's own greedy answers to the alignment prompts under each persona, as triples."""
    from conscience.generation import LocalGenerator, Sampling
    from conscience.training.data import general_prompts

    prompts, generator = general_prompts(), LocalGenerator(lm)
    answers = {}
    for side in ("ethical", "malicious"):
        answers[side] = []
        for start in range(0, len(prompts), batch_size):
            chats = [[{"role": "system", "content": personas[side]}, {"role": "user", "content": p}]
                     for p in prompts[start:start + batch_size]]
            answers[side] += [g.answer for g in generator.generate(chats, Sampling(max_new_tokens=max_new_tokens))]
    # categories only split the card's own validation folds (five of them)
    return [{"id": f"self-{i}", "category": f"fold{i % 5}", "prompt": p, "aligned": a, "misaligned": m}
            for i, (p, a, m) in enumerate(zip(prompts, answers["ethical"], answers["malicious"], strict=True))
            if a.strip() and m.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(CONTRAST), help="labelled triples to score on (labels only score)")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--personas", default=str(HERE / "personas.yaml"))
    parser.add_argument("--max-new-tokens", type=int, default=96, help="self-contrast answers' length")
    parser.add_argument("--work", default="runs/label_free", help="folder for the self-contrast triples and card")
    parser.add_argument("--readings", default=",".join(READINGS),
                        help=f"comma-separated readings to run (default: all of {', '.join(READINGS)})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()
    readings = [r.strip() for r in args.readings.split(",") if r.strip()]
    if not readings or set(readings) - set(READINGS):
        parser.error(f"--readings: choose from {', '.join(READINGS)}, got {args.readings!r}")

    import torch

    from conscience.evaluation.drift import mean_answer_logprobs
    from conscience.framings import load_framings
    from conscience.models import load_model
    from conscience.verdict.calibration import cached_features, fit_card_on_data, triple_items
    from conscience.verdict.latent import LatentReviewer
    from conscience.verdict.scores import mean_log_odds
    from conscience.verdict.sources import sources_digest

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    personas = (read_yaml(args.personas) or {}).get("personas")
    if not (isinstance(personas, dict) and all(isinstance(personas.get(k), str) and personas[k].strip()
                                                for k in ("ethical", "malicious"))):
        parser.error(f"{args.personas}: field 'personas' needs non-empty texts 'ethical' and 'malicious'")
    triples = load_triples(args.data)
    lm = load_model(args.model)
    items, _, _, _ = triple_items(triples)
    prompts, answers = [i.prompt for i in items], [i.answer for i in items]
    rows = {}

    key = sources_digest(args.data)
    X, _ = cached_features(lm, items, load_framings()["aligned"], key, review_format="look_back", pool="answer")
    layer, direction, share = pair_difference_direction(X, len(triples))
    if {"persona", "pair-pc"} & set(readings):
        ratio = (mean_answer_logprobs(lm, prompts, answers, system=personas["ethical"])
                 - mean_answer_logprobs(lm, prompts, answers, system=personas["malicious"]))
        rows["persona"] = report(ratio, triples)
        projection = standardised(X[:, layer]) @ direction
        sign = 1.0 if np.corrcoef(projection, ratio)[0, 1] >= 0 else -1.0
        rows["pair-pc"] = {**report(sign * projection, triples), "layer": layer, "variance_share": round(share, 4)}
    if {"verbal", "self-verdict"} & set(readings):
        framings = load_framings()
        per_framing = [cached_features(lm, items, f, key, review_format="look_back", pool="answer")[1]
                       for f in framings.values()]
        verbal = np.array([mean_log_odds(p) for p in zip(*per_framing, strict=True)])
        rows["verbal"] = {**report(verbal, triples), "framings": len(framings)}
        rows["self-verdict"] = {**report(self_verdict_scores(standardised(X[:, layer]), verbal, len(triples)),
                                         triples), "layer": layer}
    if "self-contrast" in readings:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        own = self_contrast_triples(lm, personas, args.max_new_tokens)
        (work / "self_contrast.jsonl").write_text("".join(json.dumps(t) + "\n" for t in own), encoding="utf-8")
        card = fit_card_on_data(lm, work / "self_contrast.jsonl", work / "self-card", review_format="look_back")
        scores = LatentReviewer(lm, card).latent_scores(X)
        rows["self-contrast"] = {**report(scores, triples), "layer": card.probe.layers, "n_own_triples": len(own),
                                 "own_kfold": card.probe.metrics["kfold"]["auc"]}
    rows = {r: rows[r] for r in readings}

    print(f"{'reading':<15} {'paired':>7} {'auc':>7}   (on {Path(args.data).name}, labels only to score)")
    for name, row in rows.items():
        print(f"{name:<15} {row['paired_accuracy']:>7.3f} {row['auc']:>7.3f}   "
              f"{ {k: v for k, v in row.items() if k not in ('paired_accuracy', 'auc')} or ''}")
    if args.out:
        write_json_atomic(args.out, {"data": args.data, "model": lm.identity, "readings": rows,
                                     "seconds": round(time.perf_counter() - start, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
