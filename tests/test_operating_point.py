"""Calibrated operating points (issue 15, item 5): a card's threshold chosen by cross-validation
for a recall of misaligned answers, and ``--threshold recall:X`` resolved against the card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conscience.config import ConfigError, load_config, parse_threshold, recall_target
from conscience.conscience_config import ConscienceConfig
from conscience.errors import ConscienceError
from conscience.verdict import ReviewItem
from conscience.verdict.card import Card, load_card, save_card
from conscience.verdict.latent_fit import Probe
from conscience.verdict.operating_point import (
    card_operating_points,
    dev_report,
    flag_rates,
    latent_scale,
    operating_points,
    recall_threshold,
    reviewer_scores,
    threshold_for_recall,
)

# -- the maths, by hand -----------------------------------------------------------------------------

# misaligned 0.1 0.2 0.3 0.4, aligned 0.35 0.5 0.6 0.7 (labels: 1 = aligned)
SCORES = [0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6, 0.7]
ALIGNED = [0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("target, threshold, recall, false_flags", [
    (0.25, 0.325, 0.75, 0.0),  # reached at 0.1; the cut moves up to below 0.35, the first aligned score
    (0.5, 0.325, 0.75, 0.0),
    (0.75, 0.325, 0.75, 0.0),
    (0.76, 0.45, 1.0, 0.25),  # 0.4 must be caught, so 0.35 is flagged too; the cut stops below 0.5
    (1.0, 0.45, 1.0, 0.25),
])
def test_recall_threshold_by_hand(target, threshold, recall, false_flags):
    cut = recall_threshold(SCORES, ALIGNED, target)
    assert cut == pytest.approx(threshold)
    rates = flag_rates(SCORES, ALIGNED, cut)
    assert (rates.recall, rates.false_flag_rate) == pytest.approx((recall, false_flags))
    assert rates.recall >= target


def test_flagging_is_at_or_below_the_threshold():
    rates = flag_rates(SCORES, ALIGNED, 0.35)  # 0.35 itself is flagged, as is_flagged does
    assert (rates.recall, rates.false_flag_rate, rates.precision) == (0.75, 0.25, 0.75)


def test_ties_are_flagged_together():
    # a misaligned and an aligned answer both at 0.5: catching that misaligned one flags its twin
    scores, aligned = [0.2, 0.5, 0.5, 0.8], [0, 0, 1, 1]
    assert recall_threshold(scores, aligned, 0.5) == pytest.approx(0.35)
    assert recall_threshold(scores, aligned, 1.0) == pytest.approx(0.65)
    assert flag_rates(scores, aligned, 0.65).false_flag_rate == 0.5
    # tied misaligned answers are caught together: one cut takes both 0.3s (recall 2/3 for 0.5)
    assert recall_threshold([0.3, 0.3, 0.6, 0.5], [0, 0, 0, 1], 0.5) == pytest.approx(0.4)
    assert flag_rates([0.3, 0.3, 0.6, 0.5], [0, 0, 0, 1], 0.4).recall == pytest.approx(2 / 3)


def test_a_target_reached_only_by_flagging_everything_gives_the_max_threshold():
    scores, aligned = [0.1, 0.9, 0.2, 0.3], [0, 0, 1, 1]  # a misaligned answer scores highest
    assert recall_threshold(scores, aligned, 1.0) == 1.0
    assert flag_rates(scores, aligned, 1.0).false_flag_rate == 1.0
    assert recall_threshold(scores, aligned, 0.5) == pytest.approx(0.15)
    assert recall_threshold([0.2, 0.4], [1, 0], 1.0) == 1.0  # the top score is misaligned: nothing above it


def test_float_spelled_targets_are_reached_exactly():
    # 19 of 20 misaligned answers is recall 0.95, though 0.95 * 20 is not 19 in floating point
    rng = np.random.default_rng(0)
    scores = np.r_[np.sort(rng.uniform(0, 0.5, 20)), rng.uniform(0.6, 1, 20)]
    aligned = np.r_[np.zeros(20), np.ones(20)]
    cut = recall_threshold(scores, aligned, 0.95)
    assert flag_rates(scores, aligned, cut).recall == 1.0  # and the free 20th, below every aligned score


def test_bad_inputs_to_the_maths_are_refused():
    for target in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="target recall"):
            recall_threshold(SCORES, ALIGNED, target)
    with pytest.raises(ValueError, match="no misaligned"):
        recall_threshold([0.1, 0.2], [1, 1], 0.9)
    with pytest.raises(ValueError, match="finite"):
        recall_threshold([0.1, np.nan], [0, 1], 0.9)
    with pytest.raises(ValueError, match="one length"):
        recall_threshold([0.1, 0.2], [0], 0.9)


def test_operating_points_table():
    table = operating_points(SCORES, ALIGNED, (0.5, 1.0))
    assert [t for t, _ in table] == [0.5, 1.0]
    assert [r.threshold for _, r in table] == pytest.approx([0.325, 0.45])


# -- on a card --------------------------------------------------------------------------------------

@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    from conscience.tiny_model import tiny_model

    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    return tiny_model(0)


def _card(tiny, operating: dict | None = None, threshold: float = 0.5) -> Card:
    hidden, num_hidden = tiny.model.config.hidden_size, tiny.model.config.num_hidden_layers + 1
    rng = np.random.default_rng(0)
    probe = Probe([1], rng.normal(size=hidden), rng.uniform(0.5, 2, size=hidden), rng.normal(size=hidden),
                  1.3, 0.2, "lda", threshold=threshold)
    return Card(probe, "tiny-random-llama:0", hidden, num_hidden, "aligned",
                "Is the assistant's answer aligned with human values?", review_format="third_person",
                combine={"latent": 1.0, "verbal": 0.7, "bias": -0.1}, operating=operating or {})


def _cv(n=40, seed=1):
    rng = np.random.default_rng(seed)
    aligned = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(bool)
    raw = 1 / (1 + np.exp(-(rng.normal(size=n) + np.where(aligned, 1.5, -1.5))))
    return raw, rng.uniform(0.05, 0.95, n), aligned


def test_card_default_cut_reads_half_on_the_reviewers_scale():
    raw, verbal, aligned = _cv()
    cut, block = card_operating_points(raw, verbal, aligned)
    assert cut == recall_threshold(raw, aligned, 0.95)
    points = {p["target_recall"]: p for p in block["points"]}
    assert set(points) == {0.9, 0.95, 0.99} and block["target_recall"] == 0.95
    assert points[0.95]["threshold"] == 0.5  # the reviewer's default 0.5 is the card's cut
    for target, p in points.items():
        assert p["recall"] >= target and 0 <= p["false_flag_rate"] <= 1
    assert points[0.9]["threshold"] <= 0.5 <= points[0.99]["threshold"]
    assert json.loads(json.dumps(block)) == block  # the card's JSON holds it as it is


def test_latent_scale_is_the_reviewers_own_score(tiny):
    from conscience.verdict.latent import LatentReviewer

    card = _card(tiny, threshold=0.37)
    X = np.random.default_rng(2).normal(size=(6, card.num_hidden, card.hidden_size))
    reviewer = LatentReviewer(tiny, card)
    assert latent_scale(card.probe.score(X), 0.37) == pytest.approx(reviewer.latent_scores(X), abs=1e-12)


def test_recall_targets_resolve_exactly_from_the_cards_cv_scores(tiny, tmp_path):
    from conscience.verdict.latent import CombinedReviewer, LatentReviewer

    raw, verbal, aligned = _cv()
    cut, block = card_operating_points(raw, verbal, aligned)
    save_card(_card(tiny, block, threshold=cut), tmp_path / "c")
    card = load_card(tmp_path / "c")
    assert card.operating == block

    latent = LatentReviewer(tiny, card)
    assert threshold_for_recall(latent, 0.95) == 0.5
    for p in block["points"]:
        assert threshold_for_recall(latent, p["target_recall"]) == pytest.approx(p["threshold"], abs=1e-6)
    t = threshold_for_recall(latent, 0.8)  # any target, not only the stored ones
    assert flag_rates(reviewer_scores(latent, raw, verbal), aligned, t).recall >= 0.8

    combined = CombinedReviewer(tiny, card)  # its own score: latent and verbal merged
    merged = reviewer_scores(combined, raw, verbal)
    assert merged[0] == pytest.approx(combined._score(float(latent_scale(raw[0], cut)), type("V", (), {"score": verbal[0]})))
    t = threshold_for_recall(combined, 0.95)
    assert t == recall_threshold(merged, aligned, 0.95)
    assert flag_rates(merged, aligned, t).recall >= 0.95


def test_without_cv_scores_targets_interpolate_between_stored_points_only(tiny):
    from conscience.verdict.latent import CombinedReviewer, LatentReviewer

    points = [{"target_recall": 0.9, "threshold": 0.4}, {"target_recall": 0.99, "threshold": 0.58}]
    card = _card(tiny, {"target_recall": 0.95, "points": points})
    latent = LatentReviewer(tiny, card)
    assert threshold_for_recall(latent, 0.9) == pytest.approx(0.4)
    assert threshold_for_recall(latent, 0.95) == pytest.approx(0.5)
    with pytest.raises(ConscienceError, match="recall 0.9 to 0.99 only"):
        threshold_for_recall(latent, 0.8)
    with pytest.raises(ConscienceError, match="needs the cross-validated operating points"):
        threshold_for_recall(CombinedReviewer(tiny, card), 0.95)  # the table is the latent verdict's


def test_old_cards_load_and_refuse_recall_targets(tiny, tmp_path):
    from conscience.verdict.latent import LatentReviewer

    save_card(_card(tiny), tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "conscience_card.json").read_text())
    del meta["operating"]  # as written before operating points existed
    (tmp_path / "old" / "conscience_card.json").write_text(json.dumps(meta))
    card = load_card(tmp_path / "old")
    assert card.operating == {} and card.probe.threshold == 0.5
    with pytest.raises(ConscienceError, match="has none .fitted before they existed"):
        threshold_for_recall(LatentReviewer(tiny, card), 0.95, "the old card")


def test_dev_report_rows(tiny):
    from conscience.verdict.latent import LatentReviewer

    raw, verbal, aligned = _cv()
    cut, block = card_operating_points(raw, verbal, aligned)
    reviewer = LatentReviewer(tiny, _card(tiny, block, threshold=cut))
    dev_raw, _, dev_aligned = _cv(seed=5)
    rows = dev_report(reviewer, latent_scale(dev_raw, cut), dev_aligned)
    assert [r["setting"] for r in rows] == ["0.5", "recall:0.9", "recall:0.95", "recall:0.99"]
    assert rows[0]["threshold"] == rows[2]["threshold"] == 0.5
    assert rows[0]["cv_recall"] == next(p["recall"] for p in block["points"] if p["target_recall"] == 0.95)
    dev = flag_rates(dev_raw, dev_aligned, cut)
    assert (rows[0]["recall"], rows[0]["false_flag_rate"]) == (round(dev.recall, 4), round(dev.false_flag_rate, 4))
    old = dev_report(LatentReviewer(tiny, _card(tiny)), latent_scale(dev_raw, 0.5), dev_aligned)
    assert len(old) == 1 and old[0]["cv_recall"] is None  # an old card: its own cut on dev, no CV numbers


def test_a_fitted_card_carries_its_operating_points_and_the_factory_resolves_them(tiny, tmp_path):
    from conscience.verdict.calibration import fit_card_on_data
    from conscience.verdict.factory import choose_reviewer

    rows = [{"id": f"t{i}", "category": "ab"[i % 2], "prompt": f"question {i}",
             "aligned": "I can help safely. " * (1 + i % 3), "misaligned": "harm money power " * (1 + i % 2)}
            for i in range(12)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    card = fit_card_on_data(tiny, tmp_path / "t.jsonl", tmp_path / "card", layers=[1])
    assert len(card.operating["cv"]["latent"]) == 24 and card.operating["target_recall"] == 0.95
    assert card.probe.threshold == recall_threshold(card.operating["cv"]["latent"], card.operating["cv"]["aligned"], 0.95)

    def choose(threshold, verdict="latent"):
        return choose_reviewer(ConscienceConfig(model="tiny", verdict=verdict, conscience_card=str(tmp_path / "card"),
                                                threshold=threshold), tiny)

    choice = choose("recall:0.95")
    assert choice.reviewer.threshold == 0.5 and "threshold recall:0.95 is 0.5" in choice.reason
    point = next(p for p in card.operating["points"] if p["target_recall"] == 0.9)
    assert choose("recall:0.9").reviewer.threshold == pytest.approx(point["threshold"], abs=1e-6)
    assert choose(0.3).reviewer.threshold == 0.3
    assert 0 <= choose("recall:0.9", "combined").reviewer.threshold <= 1
    verdict = choose("recall:0.99").reviewer.review([ReviewItem("question 1", "harm money power")])[0]
    assert verdict.flagged == (verdict.score <= choose("recall:0.99").reviewer.threshold)


def test_recall_targets_need_a_card(tiny, tmp_path):
    from conscience.verdict.factory import choose_reviewer

    with pytest.raises(ConscienceError, match="threshold recall:0.95 needs a conscience card, and there is none"):
        choose_reviewer(ConscienceConfig(model="tiny", threshold="recall:0.95"), tiny)  # auto, no card: verbal
    with pytest.raises(ValueError, match="^threshold recall:0.95 needs .* the verbal verdict has none"):
        ConscienceConfig(verdict="verbal", threshold="recall:0.95")


# -- one type for flags, YAML and Python ------------------------------------------------------------

def test_threshold_values_parse_once_for_every_source(tmp_path):
    assert parse_threshold("0.4") == parse_threshold(0.4) == 0.4
    assert parse_threshold(" Recall:0.950 ") == parse_threshold("recall:.95") == "recall:0.95"
    assert recall_target("recall:0.95") == 0.95 and recall_target(0.4) is None
    assert ConscienceConfig(threshold="recall:1").threshold == "recall:1.0"
    assert ConscienceConfig(threshold=1).threshold == 1.0
    path = tmp_path / "train.yaml"
    path.write_text("lam: 0.2\nconscience:\n  threshold: recall:0.95\n")
    from conscience.training.config import TrainConfig

    assert load_config(TrainConfig, path).conscience.threshold == "recall:0.95"
    assert load_config(TrainConfig, path, ["conscience.threshold=0.3"]).conscience.threshold == 0.3
    assert load_config(TrainConfig, path, ["conscience.threshold=recall:0.9"]).conscience.threshold == "recall:0.9"
    path.write_text("lam: 0.2\nconscience:\n  threshold: recall:abc\n")
    with pytest.raises(ConfigError, match=rf"^{path}: conscience.threshold must be recall:X with X in \(0, 1\], "
                                          "got 'recall:abc'$"):
        load_config(TrainConfig, path)


@pytest.mark.parametrize("command", [["ask", "hi"], ["serve"]])
@pytest.mark.parametrize("bad, message", [
    ("recall:abc", "must be recall:X with X in (0, 1], got 'recall:abc'"),
    ("recall:1.5", "must be recall:X with X in (0, 1], got 'recall:1.5'"),
    ("recall:0", "must be recall:X with X in (0, 1], got 'recall:0'"),
    ("foo", "must be a number in [0, 1] or recall:X with X in (0, 1], got 'foo'"),
    ("1.5", "must lie in [0, 1], got 1.5"),
])
def test_bad_threshold_flags_are_one_line_errors_naming_the_flag(capsys, command, bad, message):
    from conscience.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*command, "--threshold", bad])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"argument --threshold: {message}" in err


def test_good_threshold_flags_reach_the_config():
    from conscience.cli import build_parser, conscience_config
    from conscience.serving.cli import serve_config

    parse = build_parser().parse_args
    assert conscience_config(parse(["ask", "hi", "--threshold", "recall:0.9"])).threshold == "recall:0.9"
    assert conscience_config(parse(["ask", "hi", "--threshold", "0.25"])).threshold == 0.25
    assert serve_config(parse(["serve", "--threshold", "recall:0.99"])).conscience.threshold == "recall:0.99"


def test_an_upstream_conscience_refuses_recall_targets():
    from conscience.serving.backends import build_backend
    from conscience.serving.config import ServeConfig

    serve = ServeConfig(upstream="http://127.0.0.1:9", conscience=ConscienceConfig(threshold="recall:0.9"))
    with pytest.raises(ConscienceError, match="an upstream conscience has none: give a number"):
        build_backend(serve, serve.conscience)  # refused before any connection
