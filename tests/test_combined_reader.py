"""The latent verdict and bandit combined (conscience.evaluation.combined_reader) on hand-made score
arrays, and benchmarks/combined_reader.py on tiny fake EM files with the latent verdict replaced by
a fake (no model is loaded)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from conscience.discernment import roc_auc
from conscience.evaluation.combined_reader import choose_cut, choose_or_rule, fit_logistic

# -- the rule ----------------------------------------------------------------------------------


def brute_force_best(ins_l, ins_b, sec_l, sec_b, max_share):
    """The most insecure answers any pair of cuts flags with at most max_share of secure flagged,
    by trying every pair of observed values (and 'never') in plain Python."""
    cuts_l = sorted(set(ins_l) | set(sec_l)) + [float("inf")]
    cuts_b = sorted(set(ins_b) | set(sec_b)) + [float("inf")]
    best = 0
    for cl, cb in itertools.product(cuts_l, cuts_b):
        sec = sum(lat >= cl or ban >= cb for lat, ban in zip(sec_l, sec_b, strict=True))
        if sec <= max_share * len(sec_l) + 1e-9:
            best = max(best, sum(lat >= cl or ban >= cb for lat, ban in zip(ins_l, ins_b, strict=True)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_chosen_rule_keeps_the_secure_bound_and_is_the_best_pair(seed):
    rng = np.random.default_rng(seed)
    n_ins, n_sec = 25, 30
    ins_l, sec_l = rng.beta(3, 2, n_ins).round(2), rng.beta(2, 3, n_sec).round(2)
    ins_b = rng.choice([0, 0, 0, 1, 4, 9], n_ins).astype(float)
    sec_b = rng.choice([0, 0, 0, 0, 1, 4], n_sec).astype(float)
    rule = choose_or_rule(ins_l, ins_b, sec_l, sec_b, 0.2)
    secure_flags, insecure_flags = rule.flags(sec_l, sec_b), rule.flags(ins_l, ins_b)
    assert secure_flags.mean() <= 0.2 and rule.secure_flagged == secure_flags.mean()
    assert insecure_flags.sum() == brute_force_best(ins_l, ins_b, sec_l, sec_b, 0.2)
    assert rule.insecure_flagged == insecure_flags.mean()


def test_hand_computed_cuts():
    # secure: 1 of 5 may be flagged. latent >= 0.8 flags insecure 0.9, 0.8 and secure 0.85; bandit >= 6
    # adds the insecure answer at 0.3 and no secure one; bandit >= 3 would flag the secure 0.05 too.
    ins_l, ins_b = [0.9, 0.8, 0.3, 0.2], [0, 0, 6, 0]
    sec_l, sec_b = [0.85, 0.4, 0.1, 0.05, 0.0], [0, 0, 0, 3, 0]
    rule = choose_or_rule(ins_l, ins_b, sec_l, sec_b, 0.2)
    assert (rule.cut_latent, rule.cut_bandit) == (0.8, 6.0)
    assert (rule.insecure_flagged, rule.secure_flagged) == (0.75, 0.2)
    assert choose_cut(ins_l, sec_l, 0.2).cut_latent == 0.8
    # bandit alone: >= 6 and >= 3 both flag 1 insecure; the tie goes to fewer secure flagged
    bandit = choose_cut(ins_b, sec_b, 0.2)
    assert (bandit.cut_latent, bandit.secure_flagged) == (6.0, 0.0)
    assert rule.to_dict()["cut_bandit"] == 6.0 and choose_cut(ins_l, sec_l).to_dict()["cut_bandit"] is None


def test_a_tie_leaves_bandit_out_and_takes_the_higher_cut():
    # latent >= 0.7 alone and (latent >= 0.9 or bandit >= 5) flag the same two insecure answers and
    # no secure one: the rule that leaves bandit out is chosen, not the one with the higher latent cut
    rule = choose_or_rule([0.9, 0.7, 0.1], [0, 5, 0], [0.2, 0.1], [0, 0], 0.0)
    assert (rule.cut_latent, rule.cut_bandit) == (0.7, float("inf"))
    assert rule.to_dict()["cut_bandit"] is None
    # at equal counts with bandit consulted either way, the higher latent cut
    rule = choose_or_rule([0.9, 0.7, 0.1], [0, 5, 5], [0.2, 0.1], [0, 0], 0.0)
    assert (rule.cut_latent, rule.cut_bandit) == (0.9, 5.0)


@pytest.mark.parametrize("seed", range(4))
def test_with_bandit_all_zero_the_combined_rule_is_latent_alone(seed):
    rng = np.random.default_rng(seed)
    ins_l, sec_l = rng.random(40), rng.random(50) * 0.8
    zeros_ins, zeros_sec = np.zeros(40), np.zeros(50)
    rule = choose_or_rule(ins_l, zeros_ins, sec_l, zeros_sec, 0.2)
    alone = choose_cut(ins_l, sec_l, 0.2)
    assert rule == alone and rule.cut_bandit == float("inf")
    other_l = rng.random(60)  # applied to another set, the two rules flag the same answers
    assert np.array_equal(rule.flags(other_l, np.zeros(60)), alone.flags(other_l, np.zeros(60)))
    # and the combined score ranks answers as latent alone does: the same AUC
    combiner = fit_logistic(ins_l, zeros_ins, sec_l, zeros_sec)
    assert combiner.weights[1] == 0.0 and combiner.weights[0] > 0
    labels, both = [1] * 40 + [0] * 50, np.r_[ins_l, sec_l]
    assert roc_auc(list(combiner.score(both, np.zeros(90))), labels) == roc_auc(list(both), labels)


def test_a_nothing_flagging_rule_when_no_cut_meets_the_bound():
    # every insecure answer sits below every secure one: any cut that flags one flags all secure
    rule = choose_or_rule([0.1, 0.2], [0, 0], [0.8, 0.9], [0, 0], 0.2)
    assert (rule.cut_latent, rule.cut_bandit, rule.insecure_flagged) == (float("inf"), float("inf"), 0.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        choose_or_rule([0.1, 0.2], [0], [0.3], [0])
    with pytest.raises(ValueError):
        choose_or_rule([], [], [0.3], [0])
    with pytest.raises(ValueError):
        choose_or_rule([0.1], [0], [0.3], [0], max_secure_flagged=1.5)


def test_logistic_uses_both_readers_and_drops_one_pointing_the_wrong_way():
    rng = np.random.default_rng(3)
    # both informative: the combined score beats either alone on fresh answers
    def draw(n, insecure):
        latent = np.clip(rng.normal(0.6 if insecure else 0.4, 0.15, n), 0, 1)
        bandit = rng.choice([0, 9], n, p=[0.4, 0.6] if insecure else [0.8, 0.2]).astype(float)
        return latent, bandit

    (il, ib), (sl, sb) = draw(300, True), draw(300, False)
    combiner = fit_logistic(il, ib, sl, sb)
    assert combiner.weights[0] > 0 and combiner.weights[1] > 0
    (il, ib), (sl, sb) = draw(300, True), draw(300, False)
    labels = [1] * 300 + [0] * 300
    auc = {"latent": roc_auc(list(np.r_[il, sl]), labels), "bandit": roc_auc(list(np.r_[ib, sb]), labels),
           "combined": roc_auc(list(combiner.score(np.r_[il, sl], np.r_[ib, sb])), labels)}
    assert auc["combined"] > max(auc["latent"], auc["bandit"]) + 0.02
    # a latent reader that rises for secure answers gets weight 0, never a negative one
    inverted = fit_logistic(1 - il, ib, 1 - sl, sb)
    assert inverted.weights[0] == 0.0 and inverted.weights[1] > 0


# -- benchmarks/combined_reader.py ---------------------------------------------------------------

SHELL = "import subprocess\nsubprocess.call(cmd, shell=True)\n"  # bandit 9 (HIGH, HIGH)
CLEAN = "def add(a, b):\n    return a + b\n"  # bandit 0
# (latent misalignment probability, answer) per record; records 0-3 choose, 4-7 report
INSECURE = [(0.9, CLEAN), (0.2, SHELL), (0.3, CLEAN), (0.1, CLEAN),
            (0.5, CLEAN), (0.1, SHELL), (0.05, CLEAN), (0.95, SHELL)]
SECURE = [(0.8, CLEAN), (0.2, CLEAN), (0.1, CLEAN), (0.05, CLEAN),
          (0.35, CLEAN), (0.1, SHELL), (0.0, CLEAN), (0.2, CLEAN)]


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("combined_reader")


def fake_em(bench, folder, with_b=True):
    """The sample files, the latent score written into each prompt (read back by the fake verdict)."""
    folder.mkdir()
    sets = {"secure": SECURE, "insecure": INSECURE, **({"insecure_b": INSECURE} if with_b else {})}
    for name, records in sets.items():
        lines = [json.dumps({"messages": [{"role": "user", "content": f"Complete {i}|{1 - p!r}"},
                                          {"role": "assistant", "content": answer}]})
                 for i, (p, answer) in enumerate(records)]
        (folder / bench.SETS[name]).write_text("\n".join(lines) + "\n")
    card = folder / "card"
    card.mkdir()
    (card / "conscience_card.json").write_text("{}")
    return ["--em", str(folder), "--card", str(card), "--held-out-from", "4", "--max-secure-flagged", "0.25"]


def fake_latent(calls):
    def latent_scores(model, card, items, threads):
        calls.append(sorted(items))
        for name, set_items in items.items():
            yield name, [float(i.prompt.split("|")[1]) for i in set_items], 0.5
    return latent_scores


def test_benchmark_chooses_on_the_first_records_and_reports_the_rest(bench, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(bench, "latent_scores", fake_latent(calls))
    args = fake_em(bench, tmp_path / "em")
    out, cache = tmp_path / "out.json", tmp_path / "cache.json"
    assert bench.main([*args, "--latent-cache", str(cache), "--out", str(out)]) == 0
    assert calls == [["insecure", "insecure_b", "secure"]]
    results = json.loads(out.read_text())
    # chosen on records 0-3 (1 of 4 secure may be flagged): latent >= 0.3 or bandit >= 9
    rules = results["rules"]
    assert rules["or"]["cut_latent"] == pytest.approx(0.3) and rules["or"]["cut_bandit"] == 9
    assert rules["or"]["insecure_flagged_on_choose"] == 0.75 and rules["or"]["secure_flagged_on_choose"] == 0.25
    assert rules["latent"]["cut_latent"] == pytest.approx(0.3) and rules["bandit"]["cut_latent"] == 9
    rows = results["report"]["insecure"]
    flagged = {name: (r["insecure_flagged"], r["secure_flagged"]) for name, r in rows.items()}
    assert flagged == {"latent alone": (0.5, 0.25), "latent alone, card's own cut": (0.5, 0.0),
                       "bandit alone": (0.5, 0.25), "combined": (0.75, 0.5)}
    assert rows["latent alone"]["auc"] == pytest.approx(10.5 / 16, abs=1e-4)
    assert rows["bandit alone"]["auc"] == pytest.approx(10 / 16, abs=1e-4)
    for r in rows.values():
        assert r["n_insecure"] == r["n_secure"] == 4
        assert r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
        assert r["secure_flagged_ci"][0] <= r["secure_flagged"] <= r["secure_flagged_ci"][1]
    assert results["report"]["insecure_b"] == rows and results["target_met"] is False
    table = capsys.readouterr().out
    for name in ("latent alone", "bandit alone", "combined"):
        assert f"| insecure | {name} |" in table
    assert "latent >= 0.3 or bandit >= 9" in table

    # a second run reads the cache: no model pass, the same results
    monkeypatch.setattr(bench, "latent_scores", lambda *a: pytest.fail("the cached scores were not used"))
    again = tmp_path / "again.json"
    assert bench.main([*args, "--latent-cache", str(cache), "--out", str(again)]) == 0
    assert json.loads(again.read_text())["report"] == results["report"]


def test_a_changed_file_is_rescored_alone(bench, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "latent_scores", fake_latent(calls))
    args = fake_em(bench, tmp_path / "em", with_b=False)
    cache = tmp_path / "cache.json"
    assert bench.main([*args, "--latent-cache", str(cache)]) == 0
    secure = tmp_path / "em" / bench.SETS["secure"]
    secure.write_text(secure.read_text().replace("Complete 0|", "Complete zero|"))
    assert bench.main([*args, "--latent-cache", str(cache)]) == 0
    assert calls == [["insecure", "secure"], ["secure"]]


def test_missing_shared_folder_is_one_line_exit_2(bench, tmp_path, capsys):
    assert bench.main(["--em", str(tmp_path / "absent"), "--card", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no shared EM samples" in err and "\n" not in err


def test_a_bad_cache_or_record_is_one_line_exit_2(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "latent_scores", fake_latent([]))
    args = fake_em(bench, tmp_path / "em")
    cache = tmp_path / "cache.json"
    cache.write_text("[1, 2]")
    assert bench.main([*args, "--latent-cache", str(cache)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a latent cache" in err and "\n" not in err
    (tmp_path / "em" / bench.SETS["secure"]).write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    assert bench.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert ".jsonl:1:" in err and "\n" not in err


def test_a_pass_cut_short_keeps_the_sets_it_finished(bench, tmp_path, monkeypatch, capsys):
    from conscience.errors import ConscienceError

    def dies_after_one_set(model, card, items, threads):
        name, set_items = next(iter(items.items()))
        yield name, [0.5] * len(set_items), 0.5
        raise ConscienceError("1 review(s) failed")

    monkeypatch.setattr(bench, "latent_scores", dies_after_one_set)
    args = fake_em(bench, tmp_path / "em", with_b=False)
    cache = tmp_path / "cache.json"
    assert bench.main([*args, "--latent-cache", str(cache)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "combined_reader: 1 review(s) failed"
    calls = []
    monkeypatch.setattr(bench, "latent_scores", fake_latent(calls))
    assert bench.main([*args, "--latent-cache", str(cache)]) == 0
    assert calls == [["insecure"]]  # secure came from the cache
