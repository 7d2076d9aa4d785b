"""The label-free benchmark's direction finder on planted data (pure maths, no model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("label_free", REPO / "benchmarks" / "label_free.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pair_difference_direction_finds_the_planted_layer_and_axis():
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
    layer, direction, share = _bench().pair_difference_direction(X, pairs)
    assert layer == 2
    assert abs(direction[3]) > 0.95 and share > 0.5
    # no planted axis anywhere: no component explains most of the differences
    flat_states = np.r_[prompt, prompt] + 0.3 * rng.normal(size=(2 * pairs, layers, hidden))
    _, _, flat = _bench().pair_difference_direction(flat_states, pairs)
    assert flat < 0.3
