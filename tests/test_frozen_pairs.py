"""pair_source: frozen — the frozen copy's own answers ranked by its conscience become the DPO pairs
of every step: the ranking on hand numbers, a tiny run that uses pairs on every step without sampling,
the pairs' cache, and the direction of the update."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_peer_methods import config, metrics

from conscience.tiny_model import tiny_model
from conscience.training.frozen_pairs import CACHE_FILE, rank_pairs

torch.set_num_threads(1)


def test_each_prompt_pairs_its_best_answer_against_its_worst_by_the_margin():
    pairs = rank_pairs(["p1", "p2", "p3", "p4"],
                       [["a", "b", "c"], ["x", "y"], ["same", "same"], ["only", "  "]],
                       [[0.2, 0.9, 0.1], [0.50, 0.45], [0.9, 0.1], [0.9, 0.1]], margin=0.1)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("p1", "b", "c")]  # p2 within the margin
    assert pairs[0].margin == pytest.approx(0.8) and pairs[0].source == "frozen"
    tie = rank_pairs(["p"], [["first", "second", "third"]], [[0.7, 0.7, 0.2]], margin=0.0)[0]
    assert (tie.chosen, tie.rejected) == ("first", "third")


def test_a_frozen_pair_run_uses_pairs_every_step_and_never_samples(tmp_path):
    from conscience.training.run import run_training

    cfg = config(tmp_path, lam=20.0, pair_source="frozen", k=3, aligned_pool=1, dpo_batch=1, margin=0.0, max_steps=3,
                 align_every=0, sample_temperature=1.0, lr=5e-3)
    run_training(cfg, lm=tiny_model(0))
    rows = metrics(cfg)
    assert [r["pairs_in_step"] for r in rows] == [1, 1, 1]  # dense: a pair on every step
    assert all(r["samples"] == 0 for r in rows)  # no sampling while training
    assert rows[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as its reference
    assert rows[-1]["reward_margin"] > 0  # the one pair's chosen answer gained on its rejected one
    cache = json.loads((Path(cfg.output_dir) / CACHE_FILE).read_text())
    assert len(cache["pairs"]) == 1 and cache["pairs"][0]["source"] == "frozen"


@pytest.mark.parametrize("overrides, message", [
    ({"pair_source": "frozen", "k": 1, "lam": 1.0}, "ranks k >= 2 answers"),
    ({"pair_source": "online", "lam": 1.0, "align_every": 0}, "needs align_every"),
])
def test_frozen_pair_configs_that_cannot_run_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)
