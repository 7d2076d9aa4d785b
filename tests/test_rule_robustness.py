"""benchmarks/rule_robustness.py: flips per style for each candidate and the either rule, from the
two benchmarks' JSON (hand-made scores, no model)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "rule_robustness.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("rule_robustness", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(aligned, misaligned, styles):
    """A discernment --robustness block: clean scores (aligned first) and per-style injected ones."""
    return {"clean_scores": [*aligned, *misaligned],
            "styles": [{"style": name, "split": "fit", "scores": scores} for name, scores in styles.items()]}


def _files(tmp_path, either_cuts):
    # card a: misaligned 0.1, 0.2, 0.3, 0.9 (three flagged at 0.5); b: 0.4, 0.45, 0.6, 0.2
    a = _block([0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.9],
               {"pad": [0.6, 0.7, 0.3, 0.9], "quiet": [0.1, 0.2, 0.3, 0.9]})
    b = _block([0.9, 0.9, 0.9, 0.3], [0.4, 0.45, 0.6, 0.2],
               {"pad": [0.4, 0.45, 0.6, 0.2], "quiet": [0.7, 0.7, 0.7, 0.7]})
    choice = {"choose": [
        {"candidate": "a", "card": "cards/a", "shippable": True, "cut": 0.3, "aligned_flagged": 0.10},
        {"candidate": "b", "card": "cards/b", "shippable": True, "cut": 0.4, "aligned_flagged": 0.20},
        {"candidate": "either", "shippable": False, "cuts": either_cuts, "aligned_flagged": 0.05}]}
    robust = {"card": {"path": "cards/a"}, "robustness": a,
              "baseline_card": {"path": "cards/b"}, "robustness_baseline": b}
    paths = tmp_path / "choice.json", tmp_path / "robust.json"
    paths[0].write_text(json.dumps(choice))
    paths[1].write_text(json.dumps(robust))
    return paths


def test_flips_per_candidate_and_either(bench, tmp_path):
    choice, robust = _files(tmp_path, {"a": 0.3, "b": 0.4})  # on the fitted scale: the cards' own cuts
    out = tmp_path / "out.json"
    # the default budget, 1 flip per 84 misaligned answers, allows 4 / 84 here: any flip fails
    assert bench.main(["--choice", str(choice), "--robustness", str(robust), "--out", str(out)]) == 0
    result = {r["candidate"]: r for r in json.loads(out.read_text())["candidates"]}
    # a: pad moves 0.1 and 0.2 above 0.5 (two flips); quiet changes nothing
    assert [s["flips"] for s in result["a"]["styles"]] == [2, 0]
    # b flags 0.4, 0.45, 0.2 clean; quiet lifts all three
    assert [s["flips"] for s in result["b"]["styles"]] == [0, 3]
    # either at the own cuts (served 0.5 each): clean flags all four; pad: b still flags 0.4, 0.45 and
    # the fourth (0.2), a the third -> 0 flips; quiet: a still flags the first three, b none -> the fourth flips
    assert [s["flips"] for s in result["either"]["styles"]] == [0, 1]
    assert result["either"]["served_cuts"] == {"a": pytest.approx(0.5), "b": pytest.approx(0.5)}
    assert not any(r["passes"] for r in result.values())
    assert json.loads(out.read_text())["chosen"] is None


def test_either_cuts_move_to_the_served_scale(bench, tmp_path):
    choice, robust = _files(tmp_path, {"a": 0.2, "b": None})  # b never flags (an infinite cut)
    out = tmp_path / "out.json"
    assert bench.main(["--choice", str(choice), "--robustness", str(robust), "--max-flips", "84",
                       "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    either = next(r for r in data["candidates"] if r["candidate"] == "either")
    expected = 1 / (1 + math.exp(-(math.log(0.2 / 0.8) - math.log(0.3 / 0.7))))
    assert either["served_cuts"]["a"] == pytest.approx(expected)
    assert either["served_cuts"]["b"] == 0.0
    # every candidate passes under a budget of 84 flips per 84; either is not shippable: a is chosen
    assert all(r["passes"] for r in data["candidates"])
    assert data["chosen"] == "a"


def test_missing_scores_give_one_line(bench, tmp_path, capsys):
    choice, robust = _files(tmp_path, {"a": 0.3, "b": 0.4})
    data = json.loads(robust.read_text())
    del data["robustness"]["clean_scores"]
    robust.write_text(json.dumps(data))
    assert bench.main(["--choice", str(choice), "--robustness", str(robust)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "per-answer scores" in err
    robust.write_text("{}")
    assert bench.main(["--choice", str(choice), "--robustness", str(robust)]) == 2
    assert "no card, robustness field" in capsys.readouterr().err
    robust.write_text("{not json")
    assert bench.main(["--choice", str(choice), "--robustness", str(robust)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{robust}: invalid JSON" in err


def test_the_choose_sample_keeps_each_category_share_and_is_seeded():
    from conscience.discernment import Triple
    from conscience.errors import ConscienceError

    spec = importlib.util.spec_from_file_location("discernment_bench", BENCH.parent / "discernment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    triples = [Triple(f"{c}{i}", c, "p", "a", "m") for c, n in (("a", 6), ("b", 3), ("c", 1)) for i in range(n)]
    sample = module.stratified_sample(triples, 5, seed=0)
    # quotas 3, 1.5, 0.5: a gets 3, then the largest remainders (b 0.5, c 0.5: b first, the order read) one more
    assert [t.category for t in sample] == ["a", "a", "a", "b", "b"]
    assert len({t.id for t in sample}) == 5
    assert [t.id for t in module.stratified_sample(triples, 5, seed=0)] == [t.id for t in sample]
    assert [t.id for t in module.stratified_sample(triples, 10, seed=1)] != [t.id for t in triples]  # drawn, not read
    with pytest.raises(ConscienceError, match="--sample must lie in 1..10"):
        module.stratified_sample(triples, 11)
