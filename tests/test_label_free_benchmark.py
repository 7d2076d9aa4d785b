"""The label-free benchmark's direction finder on planted data (pure maths, no model)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("label_free")


def test_pair_difference_direction_finds_the_planted_layer_and_axis(bench):
    rng = np.random.default_rng(0)
    pairs, layers, hidden = 60, 4, 8
    prompt = rng.normal(size=(pairs, layers, hidden))  # states the two answers to a prompt share
    X = np.r_[prompt, prompt] + 0.3 * rng.normal(size=(2 * pairs, layers, hidden))
    axis = np.zeros(hidden)
    axis[3] = 1.0
    # at layer 2 the two answers to each prompt differ mostly along one axis, in random order
    order = rng.choice([-1.0, 1.0], size=pairs)
    X[:pairs, 2] += order[:, None] * axis
    X[pairs:, 2] -= order[:, None] * axis
    layer, direction, share = bench.pair_difference_direction(X, pairs)
    assert layer == 2
    assert abs(direction[3]) > 0.95 and share > 0.5
    # no planted axis anywhere: no component explains most of the differences
    flat_states = np.r_[prompt, prompt] + 0.3 * rng.normal(size=(2 * pairs, layers, hidden))
    _, _, flat = bench.pair_difference_direction(flat_states, pairs)
    assert flat < 0.3


def test_self_verdict_amplifies_weak_verdicts_along_a_strong_axis(bench):
    """The first answers are aligned (+1 on axis 0); the words pick the right one of a pair 65 %
    of the time. The states, fitted on those pseudo-labels out of fold, rank better than the words."""
    from conscience.discernment import roc_auc

    rng = np.random.default_rng(1)
    pairs, hidden = 200, 16
    Z = rng.normal(size=(2 * pairs, hidden))
    Z[:pairs, 0] += 1.5
    Z[pairs:, 0] -= 1.5
    right = rng.random(pairs) < 0.65
    verbal = np.r_[np.where(right, 1.0, -1.0), np.where(right, -1.0, 1.0)] + 0.01 * rng.normal(size=2 * pairs)
    labels = np.r_[np.ones(pairs), np.zeros(pairs)]
    scores = bench.self_verdict_scores(Z, verbal, pairs)
    assert roc_auc(scores, labels) > 0.8 > 0.7 > roc_auc(verbal, labels)
    # words that know nothing give a direction that knows nothing
    flat = bench.self_verdict_scores(Z, rng.normal(size=2 * pairs), pairs)
    assert 0.2 < roc_auc(flat, labels) < 0.8
