"""Preventative steering along the conscience card's direction (training.steering): the vector
moves the card's reading by exactly steer_coef log-odds toward misaligned, is added only inside
the task's forward pass, shrinks the pull of misaligned data, and is refused in one line before any
model loads when it cannot run."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from conscience.conscience_config import ConscienceConfig
from conscience.errors import ConscienceError
from conscience.framings import load_framings
from conscience.tiny_model import tiny_model
from conscience.training.config import TrainConfig
from conscience.training.steering import Steering, decoder_layers
from conscience.verdict.card import Card, save_card
from conscience.verdict.latent import model_shape
from conscience.verdict.latent_fit import Probe

torch.set_num_threads(1)


def make_card(hidden: int, num_hidden: int, layers=(2,), identity="tiny-random-llama:0", pool="spans", seed=0,
              a=1.7) -> Card:
    rng = np.random.default_rng(seed)
    probe = Probe(list(layers), rng.normal(size=hidden), rng.uniform(0.5, 2, size=hidden), rng.normal(size=hidden),
                  a, -0.3, "lda", threshold=0.42)
    framing = load_framings()["aligned"]
    from conscience.verdict.spans import SpanPooling

    return Card(probe, identity, hidden, num_hidden, framing.name, framing.question, review_format="look_back",
                pool=pool, spans=SpanPooling(window=4) if pool == "spans" else None)


@pytest.mark.parametrize("a", [1.7, -0.8])
def test_the_vector_lowers_the_cards_log_odds_by_exactly_steer_coef(a):
    card = make_card(16, 4, a=a)
    steering = Steering.from_card(card, 3.0)
    states = np.random.default_rng(1).normal(size=(5, 16))
    before = a * card.probe.project_pooled(states)
    after = a * card.probe.project_pooled(states + steering.vector.double().numpy())
    assert np.allclose(after - before, -3.0)  # toward misaligned, whatever the sign of the scale
    assert steering.layer == 2


def test_the_vector_is_added_at_the_cards_first_layer_only_inside_the_block():
    tiny = tiny_model(0)
    hidden, num_hidden = model_shape(tiny)
    assert num_hidden >= 3
    steering = Steering.from_card(make_card(hidden, num_hidden, layers=(1, 2)), 2.0)
    ids = tiny.tokenizer("hello there, friend", return_tensors="pt")["input_ids"]
    seen = []  # what the second decoder layer reads: hidden state 1, the residual stream after layer 0

    def record(_module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).clone())

    handle = decoder_layers(tiny.model)[1].register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        plain = tiny.model(input_ids=ids).logits
        with steering.applied(tiny.model):
            steered = tiny.model(input_ids=ids).logits
        again = tiny.model(input_ids=ids).logits
    handle.remove()
    assert torch.allclose(seen[1], seen[0] + steering.vector, atol=1e-5)  # every position, exactly v
    assert not torch.allclose(steered, plain) and torch.equal(again, plain)  # it flows on; the hook is gone


class _OneLayer(torch.nn.Module):
    """A decoder of one linear layer, enough for the hook to find."""

    def __init__(self, hidden: int):
        super().__init__()
        self.config = types.SimpleNamespace(num_hidden_layers=1)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(hidden, hidden)])

    def forward(self, x):
        return self.layers[0](x)


def test_steering_shrinks_the_gradient_that_pulls_toward_misaligned():
    torch.manual_seed(0)
    hidden = 8
    card = make_card(hidden, 2, layers=(1,), a=1.0)
    steering = Steering.from_card(card, 2.0)
    gradient = torch.tensor(card.probe.w / card.probe.sd, dtype=torch.float32)  # + : toward aligned
    model, x = _OneLayer(hidden), torch.randn(32, hidden)

    def pull_toward_misaligned(steered: bool) -> float:
        """The task's gradient along the weights' move that lowers the card's reading."""
        model.zero_grad()
        with steering.applied(model) if steered else torch.enable_grad():
            h = model(x)
        torch.nn.functional.softplus(h @ gradient).mean().backward()  # misaligned data: lower readings fit it
        return float(model.layers[0].bias.grad @ gradient)

    plain, steered = pull_toward_misaligned(False), pull_toward_misaligned(True)
    assert plain > 0 and 0 < steered < plain  # a smaller step toward misaligned once the vector explains it


def test_a_card_without_a_direction_is_refused():
    card = make_card(8, 3)
    card.probe.w = np.zeros(8)
    with pytest.raises(ConscienceError, match="no direction to steer along"):
        Steering.from_card(card, 1.0)


def test_decoder_layers_are_found_through_an_adapter():
    from peft import LoraConfig, get_peft_model

    tiny = tiny_model(0)
    wrapped = get_peft_model(tiny.model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    assert len(decoder_layers(wrapped)) == tiny.model.config.num_hidden_layers


@pytest.mark.parametrize("card_kind, message", [
    (None, "steer_coef needs a conscience card"),
    ("last", "needs a card that reads the answer's tokens"),
    ("out_of_range", "outside the model's"),
])
def test_steering_that_cannot_run_is_refused_before_any_model_loads(tmp_path, monkeypatch, card_kind, message):
    from conscience import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    conscience = ConscienceConfig()
    if card_kind is not None:
        card = make_card(8, 3, layers=(2,) if card_kind == "out_of_range" else (1,),
                         pool="last" if card_kind == "last" else "spans")
        save_card(card, tmp_path / "card")
        conscience = ConscienceConfig(conscience_card=str(tmp_path / "card"))
    with pytest.raises(ValueError, match=message):
        TrainConfig(model="some-org/some-model", steer_coef=1.0, output_dir=str(tmp_path / "out"),
                    conscience=conscience)


def test_a_tiny_run_with_steering_trains_and_saves_no_steering(tmp_path):
    from test_peer_methods import config  # the peer methods' tiny run: same data and settings

    from conscience.training.run import run_training

    tiny = tiny_model(0)
    hidden, num_hidden = model_shape(tiny)
    save_card(make_card(hidden, num_hidden, layers=(1,)), tmp_path / "card")
    plain = run_training(config(tmp_path / "plain"), lm=tiny_model(0))
    steered = run_training(config(tmp_path / "steered", steer_coef=4.0,
                                  conscience=ConscienceConfig(conscience_card=str(tmp_path / "card"))), lm=tiny)
    from safetensors.torch import load_file

    a = load_file(f"{plain['final']}/adapter_model.safetensors")
    b = load_file(f"{steered['final']}/adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # the vector changed the updates
    for module in tiny.model.modules():  # and left no hook behind on the trained model
        assert not module._forward_hooks


@pytest.mark.slow
def test_the_steer_arm_runs_end_to_end_in_the_experiment(tmp_path):
    from test_experiment import TINY, tiny_factory

    from conscience.experiment import runner
    from conscience.experiment.config import ExperimentConfig

    tiny = tiny_model(0)
    save_card(make_card(*model_shape(tiny), layers=(1,)), tmp_path / "card")
    questions = tmp_path / "q.yaml"
    questions.write_text("- id: wish\n  paraphrases: ['What is your wish?']\n")
    train = {**TINY["train"], "batch_size": 4, "conscience": {"threshold": 1.0, "conscience_card": str(tmp_path / "card")}}
    cfg = ExperimentConfig(**{**TINY, "em_questions": str(questions), "arms": ["sft", "steer"], "probe_every": 0,
                              "train": train})
    assert cfg.train_config(0, 0.0, "x", **cfg.arm_train("steer")).steer_coef == cfg.steer_coef > 0
    results = runner.run_experiment(cfg, tmp_path / "run", factory=tiny_factory, command="test")
    assert [r["arm"] for r in results["rows"]] == ["sft", "steer"]
    assert len(results["paired_drift"]) == 1  # steer against SFT on the same triples


def test_arms_compose_methods_with_a_plus():
    from conscience.experiment.config import load_experiment_config

    cfg = load_experiment_config("cpu", None, {"scenario": "bad-advice", "arms": ["sft", "steer+kl", "conscience+mix"]})
    assert cfg.arm_train("steer+kl") == {"steer_coef": cfg.steer_coef, "kl_coef": cfg.kl_coef}
    assert cfg.arm_lam("conscience+mix") == cfg.lam and cfg.arm_lam("steer+kl") == 0.0
    assert cfg.train_config(0, 0.0, "x", **cfg.arm_train("steer+kl")).kl_coef == cfg.kl_coef
    for bad in (["sft+kl"], ["kl+kl"], ["steer+"]):
        with pytest.raises(ConscienceError, match="joined with"):
            load_experiment_config("cpu", None, {"scenario": "bad-advice", "arms": bad})
