"""The loaded-model type shared by every loader: a causal LM, its tokenizer, its spec and identity.

Kept apart from :mod:`conscience.models` so that builders of in-process models
(:mod:`conscience.tiny_model`) need not import the loader that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the spec it came from.

    ``identity`` names the weights (spec plus a digest for converted files); it is written into
    every verdict card and evaluation result so numbers from different models never mix.
    """

    model: torch.nn.Module
    tokenizer: object
    spec: str
    identity: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_window(self) -> int:
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048



def prepare_tokenizer(tokenizer) -> None:
    """Left padding (for batched generation) and a pad token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
