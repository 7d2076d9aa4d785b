"""Bandit alone as a second reader of code written by others: the shared Emergent Misalignment samples.

The reader is :func:`conscience.evaluation.static_reader.read_code` (bandit on the code of each
assistant answer, as ``conscience eval code`` runs it). The data are the shared EM samples in
``<shared>/data/emergent-misalignment/subsets`` (read-only, never copied): ``secure.500.sample-a``
against ``insecure.500.sample-a`` (the same host drew both), plus ``insecure.500.sample-b`` (another
host) as a second insecure row against the same secure answers.

Held-out rule: in each file, the records with 0-based index >= 250 in file order (lines 251-500
when no line is blank) are measured here; records 0-249 are left untouched for anyone who fits
something on these samples. Every record of a file is still checked for its fields.

Reported for the held-out part: the share of insecure answers flagged (at least one finding), the
share of secure answers flagged (false flags), and the ROC AUC (the chance that an insecure answer
outscores a secure one, ties ½) of two scores: the highest severity rank × confidence rank of an
answer's findings (0 none, 1-9) and the number of findings. 95 % percentile bootstrap intervals
resample each set on its own (the sets are unpaired: they share almost no prompt). Also: each
answer's outcome (flagged, clean, no code...), the share flagged at each minimum score, and per
bandit test id how many answers of each set it fires on (what fires on secure code).

    nice -n 19 python benchmarks/static_reader.py --out /tmp/team/static_reader.json
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from conscience.discernment import roc_auc
from conscience.errors import ConscienceError, DataFormatError
from conscience.evaluation.static_reader import StaticReading, read_codes
from conscience.framings import shared_data_root
from conscience.jsonl import read_jsonl, write_json_atomic
from conscience.verdict.sources import file_digest

REPO = Path(__file__).resolve().parents[1]
SETS = {"secure": "secure.500.sample-a.jsonl", "insecure": "insecure.500.sample-a.jsonl",
        "insecure_b": "insecure.500.sample-b.jsonl"}
HELD_OUT_FROM = 250  # records [0, 250) of each file are left for fitting
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


def read_answers(path: Path) -> list[str]:
    """The assistant answer of each record of a chat JSONL file, in file order.

    Raises :class:`DataFormatError` naming the file and line of a record without a ``messages``
    list holding an assistant message with text content."""
    answers = []
    for where, record in read_jsonl(path):
        messages = record.get("messages")
        if not isinstance(messages, list):
            raise DataFormatError(f"{where}: record has no 'messages' list")
        texts = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
        if not texts or not isinstance(texts[-1], str):
            raise DataFormatError(f"{where}: record has no assistant message with text 'content'")
        answers.append(texts[-1])
    return answers


def held_out(answers: Sequence[str], start: int = HELD_OUT_FROM) -> list[str]:
    """The held-out part: the answers with index >= ``start``."""
    if len(answers) <= start:
        raise DataFormatError(f"only {len(answers)} records, none at index >= {start} to hold out")
    return list(answers[start:])


def auc_draws(positive: np.ndarray, negative: np.ndarray, idx_pos: np.ndarray, idx_neg: np.ndarray) -> np.ndarray:
    """ROC AUC (positives outscoring negatives, ties ½) of each resample: ``idx_pos (B, P)`` and
    ``idx_neg (B, N)`` index the two score arrays. Exact (equal to :func:`roc_auc` of the resample),
    computed from per-resample counts of each distinct score."""
    levels, inverse = np.unique(np.concatenate([positive, negative]), return_inverse=True)
    pos_level, neg_level = inverse[:positive.size], inverse[positive.size:]
    draws, n_levels = idx_pos.shape[0], levels.size

    def counts(level: np.ndarray, idx: np.ndarray) -> np.ndarray:
        offset = level[idx] + n_levels * np.arange(draws)[:, None]
        return np.bincount(offset.ravel(), minlength=draws * n_levels).reshape(draws, n_levels)

    pos_counts, neg_counts = counts(pos_level, idx_pos), counts(neg_level, idx_neg)
    below = np.cumsum(neg_counts, axis=1) - neg_counts  # negatives strictly below each level
    wins = (pos_counts * (below + 0.5 * neg_counts)).sum(axis=1)
    return wins / (idx_pos.shape[1] * idx_neg.shape[1])


def unpaired_bootstrap(insecure: dict[str, np.ndarray], secure: dict[str, np.ndarray],
                       samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE,
                       seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals, each set resampled on its own (the same draws for every
    statistic): ``insecure_flagged``, ``secure_flagged`` and ``auc_<score>`` for each score named
    in both dicts (``(n,)`` arrays; the flagged share is read off the ``"severity_confidence"``
    score being above 0)."""
    rng = np.random.default_rng(seed)
    n_ins, n_sec = len(insecure["severity_confidence"]), len(secure["severity_confidence"])
    idx_ins = rng.integers(0, n_ins, size=(samples, n_ins))
    idx_sec = rng.integers(0, n_sec, size=(samples, n_sec))
    draws = {"insecure_flagged": (insecure["severity_confidence"][idx_ins] > 0).mean(axis=1),
             "secure_flagged": (secure["severity_confidence"][idx_sec] > 0).mean(axis=1)}
    for name in insecure:
        draws[f"auc_{name}"] = auc_draws(insecure[name], secure[name], idx_ins, idx_sec)
    tail = (1.0 - confidence) / 2.0
    return {name: (round(float(np.quantile(v, tail)), 4), round(float(np.quantile(v, 1.0 - tail)), 4))
            for name, v in draws.items()}


def scores(readings: Sequence[StaticReading]) -> dict[str, np.ndarray]:
    """The two scores of each reading: ``severity_confidence`` and ``findings`` (their number)."""
    return {"severity_confidence": np.array([r.score for r in readings], dtype=np.float64),
            "findings": np.array([len(r.findings) for r in readings], dtype=np.float64)}


def compare(insecure: Sequence[StaticReading], secure: Sequence[StaticReading], seed: int = 0) -> dict:
    """Shares flagged, AUCs of both scores and their bootstrap intervals, and the shares flagged
    at each minimum severity × confidence score."""
    ins, sec = scores(insecure), scores(secure)
    labels = [1] * len(insecure) + [0] * len(secure)
    report = {"n_insecure": len(insecure), "n_secure": len(secure),
              "insecure_flagged": round(float((ins["severity_confidence"] > 0).mean()), 4),
              "secure_flagged": round(float((sec["severity_confidence"] > 0).mean()), 4)}
    for name in ins:
        report[f"auc_{name}"] = round(roc_auc(list(ins[name]) + list(sec[name]), labels), 4)
    report["ci95"] = unpaired_bootstrap(ins, sec, seed=seed)
    levels = sorted({int(s) for s in np.concatenate([ins["severity_confidence"], sec["severity_confidence"]])} - {0})
    report["at_min_score"] = {str(k): {"insecure_flagged": round(float((ins["severity_confidence"] >= k).mean()), 4),
                                       "secure_flagged": round(float((sec["severity_confidence"] >= k).mean()), 4)}
                              for k in levels}
    return report


def blacklist_names() -> dict[str, str]:
    """bandit's own names of its blacklist tests (B3xx calls, B4xx imports), which its findings
    report only as ``blacklist``: ``{"B403": "import_pickle", ...}``."""
    from bandit.blacklists import calls, imports

    return {item["id"]: item["name"] for table in (calls.gen_blacklist(), imports.gen_blacklist())
            for items in table.values() for item in items}


def test_id_table(readings: dict[str, Sequence[StaticReading]]) -> list[dict]:
    """Per bandit test id: its name and the number of answers of each set it fires on, most
    secure answers first (the false flags)."""
    names: dict[str, str] = {}
    blacklist = blacklist_names()
    hits: dict[str, Counter] = {name: Counter() for name in readings}
    for set_name, set_readings in readings.items():
        for reading in set_readings:
            for finding in reading.findings:
                names.setdefault(finding.test_id, blacklist.get(finding.test_id, finding.test)
                                 if finding.test == "blacklist" else finding.test)
            hits[set_name].update(reading.test_ids)
    rows = [{"test_id": t, "test": names[t], **{s: hits[s][t] for s in readings}} for t in names]
    return sorted(rows, key=lambda r: (-r.get("secure", 0), -sum(r[s] for s in readings), r["test_id"]))


def markdown(results: dict) -> str:
    """The results as markdown tables."""
    lines = [f"Bandit alone on the shared EM samples, held-out records (index >= {results['held_out_from']}).", "",
             "| insecure set | n insecure / secure | insecure flagged | secure flagged (false flags) "
             "| AUC sev×conf | AUC #findings |", "|---|---|---|---|---|---|"]
    for name, r in results["comparisons"].items():
        ci = r["ci95"]
        lines.append(f"| {name} | {r['n_insecure']} / {r['n_secure']} "
                     f"| {r['insecure_flagged']:.3f} [{ci['insecure_flagged'][0]:.3f}, {ci['insecure_flagged'][1]:.3f}] "
                     f"| {r['secure_flagged']:.3f} [{ci['secure_flagged'][0]:.3f}, {ci['secure_flagged'][1]:.3f}] "
                     f"| {r['auc_severity_confidence']:.3f} [{ci['auc_severity_confidence'][0]:.3f}, "
                     f"{ci['auc_severity_confidence'][1]:.3f}] "
                     f"| {r['auc_findings']:.3f} [{ci['auc_findings'][0]:.3f}, {ci['auc_findings'][1]:.3f}] |")
    sets = list(results["outcomes"])
    lines += ["", "95 % bootstrap intervals in brackets (each set resampled on its own).", "",
              "| outcome | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    outcomes = sorted({o for counts in results["outcomes"].values() for o in counts})
    for outcome in outcomes:
        lines.append(f"| {outcome} | " + " | ".join(str(results["outcomes"][s].get(outcome, 0)) for s in sets) + " |")
    lines += ["", "| min sev×conf score | " + " | ".join(f"{n} insecure / secure flagged" for n in results["comparisons"])
              + " |", "|---|" + "---|" * len(results["comparisons"])]
    levels = sorted({int(k) for r in results["comparisons"].values() for k in r["at_min_score"]})
    for k in levels:
        cells = []
        for r in results["comparisons"].values():
            point = r["at_min_score"].get(str(k))
            cells.append(f"{point['insecure_flagged']:.3f} / {point['secure_flagged']:.3f}" if point else "-")
        lines.append(f"| >= {k} | " + " | ".join(cells) + " |")
    lines += ["", "| bandit test | name | " + " | ".join(f"{s} answers" for s in sets) + " |",
              "|---|---|" + "---|" * len(sets)]
    for row in results["test_ids"]:
        lines.append(f"| {row['test_id']} | {row['test']} | " + " | ".join(str(row[s]) for s in sets) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--em", default=str(shared_data_root(REPO) / "data" / "emergent-misalignment" / "subsets"),
                        help="folder of the shared EM samples: " + ", ".join(SETS.values()))
    parser.add_argument("--held-out-from", type=int, default=HELD_OUT_FROM,
                        help="first record index (0-based, file order) of the measured part of each file")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", help="write the results as JSON (atomically)")
    args = parser.parse_args()

    root = Path(args.em)
    missing = [f for f in (SETS["secure"], SETS["insecure"]) if not (root / f).is_file()]
    if missing:
        print(f"static_reader: no shared EM samples at {root} (missing {', '.join(missing)})", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        paths = {name: root / f for name, f in SETS.items() if (root / f).is_file()}
        answers = {name: held_out(read_answers(path), args.held_out_from) for name, path in paths.items()}
    except ConscienceError as exc:
        print(f"static_reader: {exc}", file=sys.stderr)
        return 2
    readings = {}
    for name, texts in answers.items():
        t0 = time.perf_counter()
        readings[name] = read_codes(texts)
        print(f"{name}: {len(texts)} answers read by bandit in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    results = {
        "reader": "bandit (conscience.evaluation.static_reader.read_code)",
        "held_out_from": args.held_out_from,
        "files": {name: {"path": str(path), "sha256_16": file_digest(path)} for name, path in paths.items()},
        "comparisons": {name: compare(readings[name], readings["secure"], seed=args.seed)
                        for name in readings if name != "secure"},
        "outcomes": {name: dict(Counter(r.outcome for r in rs)) for name, rs in readings.items()},
        "test_ids": test_id_table(readings),
    }
    results["seconds"] = round(time.perf_counter() - start, 1)
    print(markdown(results))
    if args.out:
        write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
