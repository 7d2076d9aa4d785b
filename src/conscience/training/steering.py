"""Preventative steering with the conscience's own direction (persona vectors, Chen et al. 2025).

The conscience card reads misalignment as one direction of the frozen copy's hidden states at the
answer's tokens (its probe: ``a · w·((x − mu)/sd) + b`` in log-odds). While the policy trains on
the task, that direction is added to the residual stream of every task row, so the data's pull
toward misalignment is already explained by the added vector and the weights need not move that
way; evaluation, sampling, the frozen copy's passes and the saved model never see it.

``steer_coef`` is how far the added vector moves the card's reading toward misaligned, in the
card's own log-odds: ``v = −steer_coef / a · g / (g·g)`` with ``g = w / sd`` (the projection's
gradient in raw hidden units), added once at the card's first layer (the residual stream carries
it to the card's later layers).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import ConscienceError


@dataclass(frozen=True)
class Steering:
    """The vector added to the hidden states at index ``layer`` (0: the embeddings' output,
    ``i``: decoder layer ``i − 1``'s output), shape ``(H,)``."""

    layer: int
    vector: torch.Tensor

    @classmethod
    def from_card(cls, card, steer_coef: float) -> Steering:
        """The steering that lowers ``card``'s log-odds of "aligned" by ``steer_coef``."""
        probe = card.probe
        gradient = np.asarray(probe.w, dtype=np.float64) / np.asarray(probe.sd, dtype=np.float64)
        norm = float(gradient @ gradient)
        if not (np.isfinite(norm) and norm > 0 and np.isfinite(probe.a) and probe.a != 0):
            raise ConscienceError("the conscience card has no direction to steer along (zero weights or scale)")
        vector = (-steer_coef / probe.a) * gradient / norm
        return cls(min(probe.layers), torch.tensor(vector, dtype=torch.float32))

    def target(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module whose output holds hidden-state index :attr:`layer` (an adapter's wrapped
        base model included)."""
        if self.layer == 0:
            return model.get_input_embeddings()
        layers = decoder_layers(model)
        if self.layer > len(layers):
            raise ConscienceError(f"the steering layer {self.layer} is past the model's {len(layers)} layers")
        return layers[self.layer - 1]

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Within the block, every forward pass of ``model`` adds :attr:`vector` at every position."""

        def add(_module, _inputs, output):
            if isinstance(output, tuple):
                return (output[0] + self.vector.to(output[0]),) + output[1:]
            return output + self.vector.to(output)

        handle = self.target(model).register_forward_hook(add)
        try:
            yield
        finally:
            handle.remove()


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's decoder layers (through a PEFT wrapper): the ModuleList named ``layers``
    with one entry per hidden layer."""
    config = getattr(model, "config", None)
    n = getattr(getattr(config, "text_config", None) or config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] == "layers" and len(module) == n:
            return module
    raise ConscienceError("steering needs a decoder with a 'layers' list (a Llama-style model)")


def steering_card_folder(model: str, explicit: str | None, trust_adapter_card: bool = False) -> Path:
    """The card whose direction a run steers along (the verdict's own card); a one-line error,
    before any model loads, when there is none or its first layer cannot be steered."""
    from ..verdict.card import find_card, load_card

    folder = find_card(model, None, explicit, trust_adapter_card)  # training's frozen copy is the base: no adapter
    if folder is None:
        raise ConscienceError(f"steer_coef needs a conscience card for {model!r} (set conscience.conscience_card "
                              "or fit one with `conscience calibrate`)")
    card = load_card(folder)
    if card.pool == "last":
        raise ConscienceError(f"{folder}: steering needs a card that reads the answer's tokens (pool answer or "
                              f"spans), not pool {card.pool!r}")
    # the last hidden state is the final norm's output, which no layer's residual stream holds
    if not 0 <= min(card.probe.layers) < card.num_hidden - 1:
        raise ConscienceError(f"{folder}: the card's first layer {min(card.probe.layers)} is outside the model's "
                              f"steerable hidden states 0-{card.num_hidden - 2}")
    return folder


def steering_for(steer_coef: float, model: str, explicit_card: str | None, frozen,
                 trust_adapter_card: bool = False) -> Steering:
    """The run's steering: its card (:func:`steering_card_folder`) checked against the frozen
    copy's weights, turned into the vector that lowers its log-odds by ``steer_coef``."""
    from ..verdict.card import check_card, load_card
    from ..verdict.latent import model_shape

    folder = steering_card_folder(model, explicit_card, trust_adapter_card)
    card = load_card(folder)
    check_card(card, frozen.identity, *model_shape(frozen), str(folder))
    return Steering.from_card(card, steer_coef)
