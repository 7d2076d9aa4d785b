"""One forward pass of the frozen copy over review prompts: the next-token log-probs at the last
position and, when asked, the hidden states pooled per layer — reusing a draft's key/value cache
when one is handed over. A reader that needs only the states below some layer (the latent
verdict) runs only the layers below it: a layer's output depends on none above it."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch

from ..generation import PrefixCache, encode
from ..models import LoadedModel, cache_keyword, frozen


@dataclass
class ForwardResult:
    """What one forward pass over ``B`` prompts returns.

    ``log_probs`` is ``(B, V)``: the next-token log-probabilities after each prompt (``None`` from
    a pass cut to a ``depth``). ``hidden``, when asked for, is one ``(B, H)`` tensor per layer
    (embeddings first, or the layers asked for): the last token's state, or the mean over each
    prompt's draft span — or, per token, a list of ``B`` tensors ``(n_draft, H)`` per layer.
    """

    log_probs: torch.Tensor | None
    hidden: tuple[torch.Tensor, ...] | None = None

    def hidden_row(self, row: int) -> torch.Tensor:
        """The pooled hidden states of one prompt: ``(L+1, H)``, or per token ``(L+1, n_draft, H)``."""
        if self.hidden is None:
            raise ValueError("this forward pass did not read hidden states")
        return torch.stack([h[row] for h in self.hidden])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token-id sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):  # the sequences may differ in length
        if x != y:
            break
        n += 1
    return n


def _decoder(model: torch.nn.Module) -> torch.nn.Module | None:
    """The decoder under ``model``'s head (embeddings, a ``layers`` list, the final norm), where the
    model has transformers' usual layout; ``None`` otherwise."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    decoder = getattr(base, "model", None)
    return decoder if isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList) else None


@contextlib.contextmanager
def _first_layers(decoder: torch.nn.Module, depth: int):
    """``decoder`` with only its first ``depth`` layers while the block runs. The model is used by
    one thread at a time (as :func:`~conscience.models.frozen`'s adapter switch already assumes)."""
    layers = decoder.layers
    decoder.layers = layers[:depth]
    try:
        yield decoder
    finally:
        decoder.layers = layers


def _run(model: torch.nn.Module, depth: int | None, **inputs) -> tuple[torch.Tensor | None, tuple | None]:
    """One pass: (the last position's log-probs ``(B, V)``, the hidden states). With ``depth`` (and
    a decoder that can be cut) only the first ``depth`` layers run and the head does not: no
    log-probs, and states ``0 … depth - 1`` exactly as the whole model's (the last entry, normed,
    is not a layer's output)."""
    decoder = _decoder(model) if depth is not None else None
    if decoder is not None and depth < len(decoder.layers):
        with _first_layers(decoder, depth):
            return None, decoder(**inputs).hidden_states
    out = model(**inputs, logits_to_keep=1)
    return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1), out.hidden_states


@torch.no_grad()
def last_token_forward(
    lm: LoadedModel, texts: list[str], hidden_states: bool = False, prefix: PrefixCache | None = None,
    spans: Sequence[tuple[int, int]] | None = None, per_token: bool = False, layers: Sequence[int] | None = None,
    depth: int | None = None,
) -> ForwardResult:
    """One forward pass over left-padded prompts, read at the last position.

    With ``hidden_states`` the result holds the hidden states too: the last token's, or with
    ``spans`` (one ``(n_after, n_draft)`` per text, see :meth:`PromptBuilder.draft_span`) the
    mean over the draft's tokens (with ``per_token``, every draft token's state), at ``layers``
    only when given. The frozen copy is used: a PEFT adapter on ``lm.model`` is
    disabled for this pass. With ``prefix`` (one text only) the tokens it shares with the cached
    ones are not run again — except the draft's own when its states are pooled. With ``depth``
    (hidden states only: a reader of layers below ``depth``) the layers from ``depth`` up and the
    head are not run where the model can be cut there: ``log_probs`` is then ``None``.
    """
    if depth is not None and not hidden_states:
        raise ValueError("a pass cut to a depth reads hidden states only: ask for them")
    if prefix is not None and len(texts) == 1:
        return cached_forward(lm, texts[0], hidden_states, prefix, spans[0] if spans else None, per_token, layers,
                              depth)
    batch = encode(lm, texts)
    mask = batch["attention_mask"]
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding must not shift positions
    with frozen(lm.model) as model:
        log_probs, states = _run(model, depth, input_ids=batch["input_ids"], attention_mask=mask,
                                 position_ids=position_ids, output_hidden_states=hidden_states, use_cache=False)
    return ForwardResult(log_probs, pool_hidden(states, spans, per_token, layers) if hidden_states else None)


def pool_hidden(states: tuple[torch.Tensor, ...], spans: Sequence[tuple[int, int]] | None, per_token: bool = False,
                layers: Sequence[int] | None = None) -> tuple:
    """Per layer (all, or ``layers``) ``(B, H)``: the last position, or the mean over each row's
    span (from the end); with ``per_token`` a list of each row's span states ``(n, H)``."""
    if layers is not None:
        states = tuple(states[i] for i in layers)
    if spans is None:
        return tuple(h[:, -1, :].float() for h in states)
    length = states[0].shape[1]
    bounds = [(max(length - after - n, 0), length - after) for after, n in spans]
    if per_token:  # copies: a view would keep the whole batch's states alive
        return tuple([h[row, lo:hi].to(torch.float32, copy=True) for row, (lo, hi) in enumerate(bounds)]
                     for h in states)
    return tuple(torch.stack([h[row, lo:hi].float().mean(dim=0) for row, (lo, hi) in enumerate(bounds)])
                 for h in states)


def crop_cache(past, length: int) -> None:
    """Keep the first ``length`` positions of a cache. Layer by layer where the cache has layers:
    a pass cut to a depth leaves the layers above it shorter, and a negative crop (the form that
    works across versions) counts from each layer's own end."""
    layers = getattr(past, "layers", None)
    for layer in layers if layers is not None else [past]:  # older caches crop all to one length
        extra = layer.get_seq_length() - length
        if extra > 0:
            layer.crop(-extra)


@torch.no_grad()
def cached_forward(lm: LoadedModel, text: str, hidden_states: bool, prefix: PrefixCache,
                   span: tuple[int, int] | None = None, per_token: bool = False,
                   layers: Sequence[int] | None = None, depth: int | None = None) -> ForwardResult:
    """:func:`last_token_forward` for one text, running only the tokens past what it shares with
    the cached ones (the cache is cropped back afterwards, so it can serve the next review).

    A pooled ``span`` (the draft's tokens) is read from the states the decoder kept where the
    prefix has them (:attr:`PrefixCache.states`: the same weights on the same tokens); without
    kept states the draft's tokens run again for theirs."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    shared = min(common_prefix(prefix.ids, ids), len(ids) - 1)
    kept = prefix.states if span is not None and hidden_states else None
    if span is not None and kept is None:  # the draft's tokens must run again for their states to be pooled
        shared = max(min(shared, len(ids) - sum(span)), 0)
    crop_cache(prefix.past, shared)  # drop what differs (and what an earlier review appended)
    new = torch.tensor([ids[shared:]], device=lm.device)
    positions = torch.arange(shared, len(ids), device=lm.device).unsqueeze(0)
    with frozen(lm.model) as model:
        log_probs, states = _run(model, depth, input_ids=new, position_ids=positions, use_cache=True,
                                 output_hidden_states=hidden_states, **{cache_keyword(model): prefix.past})
    crop_cache(prefix.past, shared)
    if kept is not None:  # the shared positions' states from the decoder, the new ones from this pass
        states = tuple(torch.cat([kept[i, None, :shared].to(h.dtype), h], dim=1) for i, h in enumerate(states))
    pooled = pool_hidden(states, [span] if span else None, per_token, layers) if hidden_states else None
    return ForwardResult(log_probs, pooled)
