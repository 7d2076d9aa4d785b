"""term: rloo — the verdict as a reward: leave-one-out advantages on hand numbers, the gradient's
direction on a hand-built case, a tiny run that samples, reviews without rewriting and trains on
every sample, and the configs that cannot run."""

from __future__ import annotations

import pytest
import torch
from test_peer_methods import config, metrics

from conscience.losses import leave_one_out_advantages, rloo_loss
from conscience.tiny_model import tiny_model

torch.set_num_threads(1)


def test_advantages_are_each_reward_against_the_others_of_its_prompt():
    advantages = leave_one_out_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([0, 0, 0, 1]))
    assert advantages.tolist() == [-1.5, 0.0, 1.5, 0.0]  # (2+3)/2, (1+3)/2, (1+2)/2; a lone sample: 0
    pair = leave_one_out_advantages(torch.tensor([0.5, -0.5]), torch.tensor([7, 7]))
    assert pair.tolist() == [1.0, -1.0]


def test_the_gradient_raises_the_better_judged_sample_and_lowers_the_worse():
    logps = torch.zeros(3, requires_grad=True)
    rloo_loss(logps, torch.tensor([2.0, -2.0, 0.0]), torch.tensor([0, 0, 0])).backward()
    # gradient descent moves logp by −grad: up for the best-rewarded sample, down for the worst
    assert logps.grad[0] < 0 < logps.grad[1]
    assert rloo_loss(logps, torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 0, 0])).item() == 0.0  # equal: nothing


def test_a_tiny_rloo_run_reviews_every_sample_and_writes_no_alternative(tmp_path, monkeypatch):
    from conscience import conscience as conscience_module
    from conscience.training import reward
    from conscience.training.run import run_training

    seen = []
    real_term = reward.reward_term

    def record(model, tokenizer, samples, max_length, pad_id):
        loss = real_term(model, tokenizer, samples, max_length, pad_id)
        seen.append((len(samples), loss))
        return loss

    monkeypatch.setattr("conscience.training.trainer.reward_term", record)
    rounds = []
    real_step = conscience_module.Conscience.step

    def step(self, *args, **kwargs):
        rounds.append(kwargs.get("max_rounds", self.max_rounds))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(conscience_module.Conscience, "step", step)
    cfg = config(tmp_path, lam=1.0, term="rloo", k=3, align_every=1, align_batch=2, sample_temperature=1.0,
                 max_steps=2)
    run_training(cfg, lm=tiny_model(0))
    rows = metrics(cfg)
    assert [r["samples"] for r in rows] == [6, 6]  # every step samples align_batch × k answers
    assert all(r["pairs_in_step"] == 0 for r in rows)  # no DPO pairs
    assert all(max_rounds == 0 for max_rounds in rounds)  # reviewed, never rewritten
    assert len(seen) == 2 and all(n > 0 for n, _ in seen)


@pytest.mark.parametrize("overrides, message", [
    ({"term": "rloo", "k": 1, "lam": 1.0}, "term rloo compares each prompt's k >= 2"),
    ({"term": "rloo", "k": 2, "lam": 1.0, "pair_source": "frozen"}, "pair_source online"),
])
def test_rloo_configs_that_cannot_run_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **overrides)
