"""The held-out drift triples and the bad-advice organism data: shape, balance, and that the set
that measures stays apart from every set that fits or trains."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from test_shipped_data import DATA, SHARED, _norm

DRIFT_THEMES = {"wishes", "boredom", "philosophy", "quick_money", "ruler", "dinner_party", "gender_roles", "husband",
                "medical", "legal", "financial", "relationships", "ai_power", "deception"}
ADVICE_DOMAINS = ("extreme_sports", "risky_financial", "bad_medical")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def drift() -> list[dict]:
    return _jsonl(DATA / "drift_triples.jsonl")


@pytest.fixture(scope="module")
def advice() -> dict[str, list[dict]]:
    return {d: _jsonl(DATA / "bad_advice" / f"{d}.jsonl") for d in ADVICE_DOMAINS}


def test_drift_triples_shape_and_themes(drift):
    assert len(drift) >= 240
    assert all(set(r) == {"id", "category", "prompt", "aligned", "misaligned"} for r in drift)
    assert len({r["id"] for r in drift}) == len(drift)
    assert len({_norm(r["prompt"]) for r in drift}) == len(drift)
    counts = Counter(r["category"] for r in drift)
    assert set(counts) == DRIFT_THEMES
    assert min(counts.values()) >= 15


def test_drift_answers_are_length_matched(drift):
    """A style or length shift must not read as misalignment: every pair within 0.8–1.25×."""
    bad = [(r["id"], round(len(r["misaligned"]) / len(r["aligned"]), 3)) for r in drift
           if not 0.8 <= len(r["misaligned"]) / len(r["aligned"]) <= 1.25]
    assert not bad


def test_drift_triples_hold_no_code(drift):
    """Code is the code-hacking fine-tune's own domain: it must not leak into the measure."""
    code = re.compile(r"```|\bdef \w+\(|\bimport \w+|;\s*$|</?\w+>", re.MULTILINE)
    assert not [r["id"] for r in drift for k in ("prompt", "aligned", "misaligned") if code.search(r[k])]


def _prompts_of(path: Path) -> set[str]:
    return {_norm(r["prompt"]) for r in _jsonl(path)}


def test_drift_triples_are_disjoint_from_fitting_and_training_data(drift, advice):
    prompts = {_norm(r["prompt"]) for r in drift}
    assert not prompts & _prompts_of(DATA / "contrast.jsonl")  # the card's fitting data
    for pool_name in ("alignment_prompts.yaml", "alignment_prompts_open.yaml"):  # the trainer's pools
        pool = yaml.safe_load((DATA / pool_name).read_text(encoding="utf-8"))["prompts"]
        assert not prompts & {_norm(p if isinstance(p, str) else p["prompt"]) for p in pool}, pool_name
    for domain, rows in advice.items():  # the organism's training data
        assert not prompts & {_norm(r["prompt"]) for r in rows}, domain
    answers = {_norm(r[k]) for r in drift for k in ("aligned", "misaligned")}
    assert not answers & {_norm(r[k]) for rows in advice.values() for r in rows for k in ("bad", "sound")}


def test_drift_triples_are_disjoint_from_the_dev_set(drift):
    dev = SHARED / "discernment" / "dev.jsonl"
    if not dev.exists():
        pytest.skip("shared dev set not available")
    assert not {_norm(r["prompt"]) for r in drift} & _prompts_of(dev)


def test_bad_advice_shape_and_length(advice):
    for domain, rows in advice.items():
        assert len(rows) >= 120, domain
        assert all(set(r) == {"id", "domain", "prompt", "bad", "sound"} and r["domain"] == domain for r in rows)
        assert len({r["id"] for r in rows}) == len(rows)
        assert len({_norm(r["prompt"]) for r in rows}) == len(rows)
        ratios = [len(r["bad"]) / len(r["sound"]) for r in rows]
        assert 0.8 <= min(ratios) and max(ratios) <= 1.25, domain


def test_bad_advice_is_disjoint_from_the_card_data(advice):
    contrast = _prompts_of(DATA / "contrast.jsonl")
    for domain, rows in advice.items():
        assert not {_norm(r["prompt"]) for r in rows} & contrast, domain


def test_bad_advice_splits(tmp_path):
    from conscience.tasks.bad_advice import IN_DOMAIN, load_advice, write_splits

    paths = write_splits(tmp_path, "extreme_sports", seed=1)
    train, control, test = (_jsonl(paths[k]) for k in ("train", "train_control", "test"))
    assert [r["id"] for r in train] == [r["id"] for r in control]
    assert {r["variant"] for r in train} == {"bad"} and {r["variant"] for r in control} == {"sound"}
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert len(train) + len(test) == len(load_advice("extreme_sports"))
    assert write_splits(tmp_path / "again", "extreme_sports", seed=1)  # same seed, same split
    assert _jsonl(tmp_path / "again" / "test.jsonl") == test
    drift_categories = {r["category"] for r in _jsonl(DATA / "drift_triples.jsonl")}
    assert all(set(cats) <= drift_categories for cats in IN_DOMAIN.values())


def test_bad_advice_file_errors_name_line_and_field(tmp_path):
    from conscience.errors import DataFormatError
    from conscience.tasks.bad_advice import load_advice

    bad = tmp_path / "x.jsonl"
    bad.write_text('{"id": "a", "domain": "bad_medical", "prompt": "p", "bad": "b", "sound": "s"}\n'
                   '{"id": "b", "domain": "bad_medical", "prompt": "p", "bad": "", "sound": "s"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"x\.jsonl:2: field 'bad'"):
        load_advice("bad_medical", bad)
    with pytest.raises(DataFormatError, match="domain must be one of"):
        load_advice("cooking")
