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
    score_triples,
)
from conscience.errors import DataFormatError
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
