"""benchmarks/term_diagnosis.py on the tiny model: a run records each term's gradient at the probe
steps (norms, cosines), the per-step counts and the near/far drift, and its table reads them back."""

from __future__ import annotations

import json

import pytest

from conscience.tiny_model import tiny_model
from conscience.verdict.card import save_card
from conscience.verdict.latent import model_shape


@pytest.mark.slow
def test_a_diagnosis_run_on_the_tiny_model(tmp_path, benchmark_module, capsys):
    from test_steering import make_card

    diagnosis = benchmark_module("term_diagnosis")
    save_card(make_card(*model_shape(tiny_model(0)), layers=(1,)), tmp_path / "card")
    assert diagnosis.main(["--out", str(tmp_path / "run"), "--model", "tiny", "--steps", "2", "--probe-steps", "0",
                           "1", "--card", str(tmp_path / "card"), "--drift-limit", "8",
                           "--set", "train.aligned_pool=4", "--set", "train.max_length=128",
                           "--set", "train.sample_max_new_tokens=8", "--set", "train.alt_max_new_tokens=8"]) == 0
    result = json.loads((tmp_path / "run" / "diagnosis.json").read_text())
    assert [r["step"] for r in result["gradients"]] == [0, 1]
    for record in result["gradients"]:
        assert {"task", "kl", "mix", "steer"} <= set(record["norm"])
        assert all(-1.0001 <= c <= 1.0001 for c in record["cosine"].values())
        assert record["norm"]["task"] > 0 and record["norm"]["steer"] > 0  # the vector changes the task gradient
    assert [s["step"] for s in result["per_step"]] == [1, 2] and result["per_step"][0]["samples"] > 0
    assert set(result["drift_near_far"]) == {"near", "far"}
    assert "cos(dpo, task)" in capsys.readouterr().out
