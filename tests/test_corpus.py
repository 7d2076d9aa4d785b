"""The discernment corpus (``data/corpus``: fit, choose and test, split once by prompt group): its
shape, its balance, length as no cue, and that it stays apart — by prompt, exactly and nearly — from
every set that measures (dev, the drift triples) and every set that fits or trains (contrast, the
alignment and EM prompt pools, the organisms' data, the harmful and benign request lists)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from test_shipped_data import DATA, SHARED, _norm

SPLITS = ("fit", "choose", "test")
FIELDS = {"id", "category", "group", "register", "subtle", "prompt", "aligned", "misaligned"}
REGISTERS = {"terse", "chatty", "formal", "list", "leaky_refusal", "long"}
DEV_CATEGORIES = {"em_open", "harmful_request", "code_security", "deception", "risky_advice", "self_preservation",
                  "benign_edgy"}
NEAR = 0.8  # word-set Jaccard at or above which two prompts count as the same question reworded


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[dict]]:
    return {split: _jsonl(DATA / "corpus" / f"{split}.jsonl") for split in SPLITS}


def test_shape_size_and_balance(corpus):
    rows = [r for split in SPLITS for r in corpus[split]]
    assert len(rows) >= 800 and all(set(r) == FIELDS for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    per_category = Counter(r["category"] for r in rows)
    assert len(per_category) >= 14 and DEV_CATEGORIES <= set(per_category)
    assert min(per_category.values()) >= 40, per_category
    assert {r["register"] for r in rows} == REGISTERS
    assert sum(r["subtle"] for r in rows) >= 0.25 * len(rows)  # a share misaligned without trigger words
    for split in ("choose", "test"):  # every category can be read on the splits that choose and report
        assert set(Counter(r["category"] for r in corpus[split])) == set(per_category), split


def test_length_is_no_cue(corpus):
    for split in SPLITS:
        for r in corpus[split]:
            assert 0.8 <= len(r["aligned"]) / len(r["misaligned"]) <= 1.25, r["id"]
    long = [r for split in SPLITS for r in corpus[split] if r["register"] == "long"]
    assert long and all(len(r["aligned"].split()) >= 200 for r in long)


def test_splits_are_disjoint_by_group_and_by_prompt(corpus):
    groups = {split: {r["group"] for r in corpus[split]} for split in SPLITS}
    prompts = {split: {_norm(r["prompt"]) for r in corpus[split]} for split in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not groups[a] & groups[b], (a, b)
            assert not prompts[a] & prompts[b], (a, b)
            assert not _near_pairs(prompts[a], prompts[b]), (a, b)


def _words(text: str) -> frozenset[str]:
    return frozenset(_norm(text).split())


def _near_pairs(ours: set[str], theirs: set[str]) -> list[tuple[str, str]]:
    """Pairs of prompts whose word sets overlap by :data:`NEAR` or more (an inverted index keeps
    this linear in practice)."""
    index: dict[str, set[str]] = {}
    for text in theirs:
        for word in _words(text):
            index.setdefault(word, set()).add(text)
    found = []
    for text in ours:
        mine = _words(text)
        candidates = set().union(*(index.get(w, set()) for w in mine)) if mine else set()
        for other in candidates:
            theirs_words = _words(other)
            if len(mine & theirs_words) / len(mine | theirs_words) >= NEAR:
                found.append((text, other))
    return found


def _other_prompts() -> dict[str, set[str]]:
    """The prompts of every shipped set the corpus must stay apart from."""
    sets = {"contrast": {_norm(r["prompt"]) for r in _jsonl(DATA / "contrast.jsonl")},
            "drift triples": {_norm(r["prompt"]) for r in _jsonl(DATA / "drift_triples.jsonl")}}
    for pool_name in ("alignment_prompts.yaml", "alignment_prompts_open.yaml"):  # the trainer's pools
        pool = yaml.safe_load((DATA / pool_name).read_text(encoding="utf-8"))["prompts"]
        sets[pool_name] = {_norm(p if isinstance(p, str) else p["prompt"]) for p in pool}
    questions = yaml.safe_load((DATA / "em_questions.yaml").read_text(encoding="utf-8"))
    sets["EM questions"] = {_norm(p) for q in questions for p in q.get("paraphrases", [])}
    sets["bad advice"] = {_norm(r["prompt"]) for path in (DATA / "bad_advice").glob("*.jsonl") for r in _jsonl(path)}
    for name, column in (("harmful_requests.csv", "goal"), ("overrefusal.csv", "prompt")):
        with open(DATA / name, encoding="utf-8", newline="") as fh:
            sets[name] = {_norm(row[column]) for row in csv.DictReader(fh)}
    return sets


def test_corpus_is_disjoint_from_every_shipped_set(corpus):
    ours = {_norm(r["prompt"]) for split in SPLITS for r in corpus[split]}
    for name, theirs in _other_prompts().items():
        assert theirs, name
        assert not ours & theirs, name
        assert not _near_pairs(ours, theirs), name


def test_corpus_is_disjoint_from_the_dev_set(corpus):
    dev = SHARED / "discernment" / "dev.jsonl"
    if not dev.exists():
        pytest.skip("shared dev set not available")
    ours = {_norm(r["prompt"]) for split in SPLITS for r in corpus[split]}
    theirs = {_norm(r["prompt"]) for r in _jsonl(dev)}
    assert not ours & theirs and not _near_pairs(ours, theirs)
    answers = {_norm(r[k]) for r in _jsonl(dev) for k in ("aligned", "misaligned")}
    assert not answers & {_norm(r[k]) for split in SPLITS for r in corpus[split] for k in ("aligned", "misaligned")}
