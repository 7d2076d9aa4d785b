"""Discernment metrics and triple loading."""

from __future__ import annotations

import json

import pytest

from conscience.discernment import (
    Triple,
    discernment_report,
    load_triples,
    paired_accuracy,
    roc_auc,
)
from conscience.errors import DataFormatError
from conscience.evaluation.discernment_eval import score_triples
from conscience.verdict import Verdict


def _write(tmp_path, rows):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_load_triples_reads_fields_and_defaults(tmp_path):
    path = _write(tmp_path, [{"id": "a", "category": "x", "prompt": "p", "aligned": "good", "misaligned": "bad"},
                             {"prompt": "q", "aligned": "g", "misaligned": "b"}])
    triples = load_triples(path)
    assert triples[0] == Triple("a", "x", "p", "good", "bad")
    assert triples[1].category == "uncategorised" and triples[1].id == "t-2"


@pytest.mark.parametrize("bad, message", [
    ("{not json", "t.jsonl:2: invalid JSON"),
    ({"prompt": "p", "aligned": "", "misaligned": "b"}, "t.jsonl:2: field 'aligned'"),
    ({"id": "a", "prompt": "p", "aligned": "a", "misaligned": "b"}, "t.jsonl:2: id 'a' appears twice"),
    ([1, 2], "t.jsonl:2: each line must be a JSON object"),
])
def test_load_triples_names_file_line_and_field(tmp_path, bad, message):
    path = _write(tmp_path, [{"id": "a", "prompt": "p", "aligned": "a", "misaligned": "b"}, bad])
    with pytest.raises(DataFormatError, match=message):
        load_triples(path)


def test_load_triples_missing_and_empty_files(tmp_path):
    with pytest.raises(DataFormatError, match="cannot read"):
        load_triples(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataFormatError, match="holds no triples"):
        load_triples(tmp_path / "e.jsonl")


def test_roc_auc_perfect_inverse_and_ties():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0]) == 0.5
    # one positive ties one negative (½), beats the other (1): (1 + 0.5) / 2
    assert roc_auc([0.5, 0.5, 0.1], [1, 0, 0]) == 0.75
    with pytest.raises(ValueError):
        roc_auc([0.1, 0.2], [1, 1])


def test_paired_accuracy_counts_ties_as_failures():
    accuracy, ties = paired_accuracy([0.9, 0.5, 0.2, 0.7], [0.1, 0.5, 0.3, 0.6])
    assert accuracy == 0.5 and ties == 0.25
    assert paired_accuracy([0.5] * 3, [0.5] * 3) == (0.0, 1.0)


def test_report_per_category():
    triples = [Triple(str(i), "ab"[i % 2], "p", "a", "m") for i in range(4)]
    report = discernment_report([0.9, 0.9, 0.1, 0.9], [0.1, 0.2, 0.5, 0.1], triples)
    assert report["n"] == 4 and report["paired_accuracy"] == 0.75
    assert report["per_category"]["a"]["paired_accuracy"] == 0.5
    assert report["per_category"]["b"] == {"paired_accuracy": 1.0, "auc": 1.0, "tie_rate": 0.0, "n": 2}


class _LengthReviewer:
    kind = framing_name = "fake"
    threshold, review_format, accepts_draft_cache = 0.5, "third_person", False

    def __init__(self):
        self.batches = []

    def review(self, items):
        self.batches.append(len(items))
        return [Verdict(score=1.0 / len(i.answer), flagged=False, framing="f") for i in items]


def test_score_triples_batches_and_orders():
    triples = [Triple(str(i), "c", "p", "ok", "longer bad") for i in range(3)]
    reviewer = _LengthReviewer()
    aligned, misaligned = score_triples(reviewer, triples, batch_size=4)
    assert aligned == [0.5] * 3 and misaligned == [0.1] * 3
    assert reviewer.batches == [4, 2]


def test_bootstrap_intervals_resample_triples_and_match_roc_auc_exactly():
    import numpy as np

    from conscience.discernment import bootstrap_intervals

    aligned, misaligned = [0.9, 0.4, 0.7, 0.2, 0.6], [0.1, 0.5, 0.7, 0.3, 0.2]
    one = bootstrap_intervals(aligned, misaligned, samples=1, seed=3)
    idx = np.random.default_rng(3).integers(0, 5, size=(1, 5))[0]  # the one resample it drew
    a, m = [aligned[i] for i in idx], [misaligned[i] for i in idx]
    assert one["auc"][0] == one["auc"][1] == pytest.approx(roc_auc(a + m, [1] * 5 + [0] * 5))
    assert one["paired_accuracy"][0] == pytest.approx(paired_accuracy(a, m)[0])
    # separated answers cannot be resampled out of separation; identical scores stay at chance
    assert bootstrap_intervals([2, 3, 4], [0, 1, 1.5]) == {"paired_accuracy": (1.0, 1.0), "auc": (1.0, 1.0)}
    assert bootstrap_intervals([1, 1], [1, 1]) == {"paired_accuracy": (0.0, 0.0), "auc": (0.5, 0.5)}
    wide = bootstrap_intervals(aligned, misaligned, samples=500)
    assert wide["auc"][0] < roc_auc(aligned + misaligned, [1] * 5 + [0] * 5) < wide["auc"][1]
    with pytest.raises(ValueError, match="equal non-empty"):
        bootstrap_intervals([1, 2], [1])


def test_the_discernment_benchmark_table_carries_bootstrap_intervals(benchmark_module, capsys):
    bench = benchmark_module("discernment")
    triples = [Triple(f"t{i}", "ab"[i % 2], f"p{i}", "a", "m") for i in range(6)]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4] + [0.1, 0.2, 0.75, 0.3, 0.2, 0.1]  # t2 the wrong way round
    table: list = []
    bench.row(table, "latent", "hand", scores, triples)
    entry = table[0]
    assert entry["paired_accuracy"] == pytest.approx(5 / 6) and entry["n"] == 6
    low, high = entry["paired_accuracy_ci"]
    assert low < 5 / 6 <= high == 1.0
    assert entry["auc_ci"][0] <= entry["auc"] <= entry["auc_ci"][1]
    assert entry["per_category"]["b"]["paired_accuracy_ci"] == (1.0, 1.0)  # t1, t3, t5: all right
    assert "(" in capsys.readouterr().out
