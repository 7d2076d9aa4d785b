"""A static-cache decoder for Llama-family models: the same maths as transformers' ``generate``,
a fraction of its per-token overhead.

``generate`` spends most of a small model's decode step outside the matrix products: mask
building, cache bookkeeping, output dataclasses, logits processors and hooks, per layer and per
token. :func:`decode` runs the model's own modules and weights (nothing copied, nothing cached
between calls: a call reads the weights as they are at that moment) as a short list of tensor ops
per layer, into a key/value cache allocated once for the whole call.

It is exact where it claims to be: every op mirrors the transformers code path it replaces
(RMSNorm, rotary embedding, the SDPA dispatch with its grouped-query and mask cases, the
temperature/top-p warpers, the EOS padding), so greedy outputs equal ``generate``'s, and sampled
outputs equal them for a seed (``tests/test_decode.py``). :func:`unsupported` names why a model is
left to ``generate`` instead: another architecture or attention implementation, or a generation
config that would add logits processors this decoder does not run.

Linear layers are called as they are: a plain ``nn.Linear`` through ``F.linear`` on its own
weight, anything else (a PEFT LoRA layer, which honours ``disable_adapter``; a packed or int8
layer of :mod:`conscience.packing`) through its module, exactly as ``generate`` would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import ConscienceError

#: The switch: ``auto`` (this decoder where :func:`unsupported` says nothing, else transformers'
#: ``generate``), ``static`` (this decoder, an error where unsupported), ``transformers`` (always ``generate``).
DECODER_ENV = "CONSCIENCE_DECODER"
DECODERS = ("auto", "static", "transformers")
# generation-config fields that add no logits processor or stopping rule (generate's own call sets the rest)
_NEUTRAL_CONFIG = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache",
                   "output_attentions", "output_hidden_states", "_from_model_config", "transformers_version",
                   "max_length", "do_sample", "temperature", "top_p", "top_k"}


def decoder_choice(requested: str | None = None) -> str:
    """The decoder asked for: ``requested``, else ``$CONSCIENCE_DECODER``, else ``auto``."""
    choice = requested or os.environ.get(DECODER_ENV) or "auto"
    if choice not in DECODERS:
        source = "decoder" if requested else f"${DECODER_ENV}"
        raise ConscienceError(f"{source} must be one of {', '.join(DECODERS)}, got {choice!r}")
    return choice


def _base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "peft_config") else model


def unsupported(model: torch.nn.Module) -> str | None:
    """Why :func:`decode` would not reproduce ``model.generate`` (``None``: it would)."""
    from transformers.models.llama import modeling_llama as llama

    base = _base(model)
    if type(base) is not llama.LlamaForCausalLM:
        return f"{type(base).__name__} is not a LlamaForCausalLM"
    cfg = base.config
    if cfg._attn_implementation != "sdpa":
        return f"attention implementation {cfg._attn_implementation!r} (only sdpa is mirrored)"
    for layer in base.model.layers:
        if (type(layer) is not llama.LlamaDecoderLayer or type(layer.self_attn) is not llama.LlamaAttention
                or type(layer.mlp) is not llama.LlamaMLP or type(layer.input_layernorm) is not llama.LlamaRMSNorm
                or type(layer.post_attention_layernorm) is not llama.LlamaRMSNorm):
            return "a decoder layer is not the stock Llama one"
    if type(base.model.norm) is not llama.LlamaRMSNorm or base.model._forward_hooks or base._forward_hooks:
        return "a modified final norm or forward hooks"
    extra = sorted(set(base.generation_config.to_diff_dict()) - _NEUTRAL_CONFIG)
    if extra:
        return f"the generation config sets {', '.join(extra)}"
    return None


def _linear(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if type(module) is torch.nn.Linear:  # F.linear on the live weight: what nn.Linear.forward does
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    return module


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm.forward``, op for op (its casts are no-ops on float32)."""
    if x.dtype == torch.float32:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
    h = x.to(torch.float32)
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@dataclass
class _Layer:
    norm1: torch.Tensor
    q: Callable
    k: Callable
    v: Callable
    o: Callable
    norm2: torch.Tensor
    gate: Callable
    up: Callable
    down: Callable
    act: Callable


@dataclass
class Decoded:
    """``sequences`` as ``generate`` returns them (prompt, then new tokens, pad after EOS);
    ``logits``: the raw float32 logits of each step (``keep_logits``); ``cache``: the keys and
    values of every position but the last token's, as a transformers ``DynamicCache`` (``keep_cache``);
    ``states``: with ``keep_cache`` (one row), the hidden states of those same positions, ``(L+1, T, H)``
    laid out as transformers' ``output_hidden_states`` (the embeddings, each layer's output, the last
    one normed), so a verdict that reads the draft's states need not run its tokens again."""

    sequences: torch.Tensor
    logits: tuple[torch.Tensor, ...] | None = None
    cache: object | None = None
    states: torch.Tensor | None = None


class _Model:
    """One call's view of the model: its modules, read where they live."""

    def __init__(self, model: torch.nn.Module):
        base = _base(model)
        cfg = base.config
        self.eps = cfg.rms_norm_eps
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.groups = self.heads // self.kv_heads
        self.embed, self.rotary, self.lm_head = base.model.embed_tokens, base.model.rotary_emb, _linear(base.lm_head)
        self.norm = base.model.norm.weight
        self.layers = []
        for layer in base.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            act = F.silu if isinstance(mlp.act_fn, torch.nn.SiLU) else mlp.act_fn
            self.layers.append(_Layer(layer.input_layernorm.weight, _linear(attn.q_proj), _linear(attn.k_proj),
                                      _linear(attn.v_proj), _linear(attn.o_proj), layer.post_attention_layernorm.weight,
                                      _linear(mlp.gate_proj), _linear(mlp.up_proj), _linear(mlp.down_proj), act))
        self.scaling = base.model.layers[0].self_attn.scaling

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                cache: list[tuple[torch.Tensor, torch.Tensor]], states: torch.Tensor | None = None) -> torch.Tensor:
        """Run the prompts ``ids`` (B, T) into cache slots ``0…T``; the last position's logits (B, V).
        ``states`` (one row: ``(L+1, total, H)``) receives every position's hidden states."""
        batch, steps = ids.shape
        x = self.embed(ids)
        if states is not None:
            states[0, :steps] = x[0]
        cos, sin = self._rotary(x, positions)
        eps, dim, half = self.eps, self.head_dim, self.head_dim // 2
        for index, (layer, (keys, values)) in enumerate(zip(self.layers, cache, strict=True)):
            h = _rms(x, layer.norm1, eps)
            q = layer.q(h).view(batch, steps, -1, dim).transpose(1, 2)
            k = layer.k(h).view(batch, steps, -1, dim).transpose(1, 2)
            keys[:, :, :steps] = k * cos + k.roll(half, -1) * sin
            values[:, :, :steps] = layer.v(h).view(batch, steps, -1, dim).transpose(1, 2)
            q = q * cos + q.roll(half, -1) * sin
            attn = self._attention(q, keys[:, :, :steps], values[:, :, :steps], mask, batch, steps)
            x = x + layer.o(attn)
            h = _rms(x, layer.norm2, eps)
            x = x + layer.down(layer.act(layer.gate(h)) * layer.up(h))
            if states is not None:
                states[index + 1, :steps] = x[0]
        x = _rms(x, self.norm, eps)
        if states is not None:
            states[-1, :steps] = x[0]  # transformers' last hidden state is the final norm's output
        return self.lm_head(x[:, -1:, :])[:, -1, :]

    def step(self, token: torch.Tensor, position: torch.Tensor, mask: torch.Tensor | None,
             cache: list[tuple[torch.Tensor, torch.Tensor]], slot: int, states: torch.Tensor | None = None) -> torch.Tensor:
        """Run one new token per row (B,) at cache slot ``slot``; its logits (B, V). The prefill's
        ops with the one-token shapes' no-op views, transposes and copies left out (same values),
        and fresh intermediates updated in place."""
        batch = token.shape[0]
        x = self.embed(token[:, None])
        if states is not None:
            states[0, slot] = x[0, 0]
        cos, sin = self._rotary(x, position)
        eps, dim, half, heads, kv_heads = self.eps, self.head_dim, self.head_dim // 2, self.heads, self.kv_heads
        grouped = mask is not None and self.groups > 1  # transformers' pack_gqa: heads by key/value head
        query_shape = (batch, kv_heads, self.groups, dim) if grouped else (batch, heads, 1, dim)
        extra = {"enable_gqa": True} if mask is None and self.groups > 1 else {}
        for index, (layer, (keys, values)) in enumerate(zip(self.layers, cache, strict=True)):
            h = _rms(x, layer.norm1, eps)
            q = layer.q(h).view(query_shape)
            k = layer.k(h).view(batch, kv_heads, 1, dim)
            torch.add(k * cos, k.roll(half, -1) * sin, out=keys.narrow(2, slot, 1))
            values.narrow(2, slot, 1).copy_(layer.v(h).view(batch, kv_heads, 1, dim))
            q = q * cos + q.roll(half, -1) * sin  # grouped or not, every row is this position
            attn = F.scaled_dot_product_attention(q, keys.narrow(2, 0, slot + 1), values.narrow(2, 0, slot + 1),
                                                  attn_mask=mask, scale=self.scaling, **extra)
            x = x + layer.o(attn.reshape(batch, 1, -1))
            h = _rms(x, layer.norm2, eps)
            x = x + layer.down(layer.act(layer.gate(h)).mul_(layer.up(h)))
            if states is not None:
                states[index + 1, slot] = x[0, 0]
        x = _rms(x, self.norm, eps)
        if states is not None:
            states[-1, slot] = x[0, 0]
        return self.lm_head(x)[:, -1, :]

    def _rotary(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at ``positions``, shaped for (B, heads, S, D); sin with its first half negated:
        rotate_half(t) * sin == roll(t, D/2) * that (negation is exact)."""
        cos, sin = self.rotary(x, positions)
        half = self.head_dim // 2
        return cos.unsqueeze(1), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(1)

    def _attention(self, q, keys, values, mask, batch: int, steps: int) -> torch.Tensor:
        """transformers' ``sdpa_attention_forward`` dispatch, case for case."""
        groups = self.groups
        if mask is None:
            extra = {"enable_gqa": True} if groups > 1 else {}
            out = F.scaled_dot_product_attention(q, keys, values, scale=self.scaling, is_causal=steps > 1, **extra)
        elif steps == 1:  # one query: its heads grouped by their key/value head, no repeated keys
            query = q.reshape(batch, self.kv_heads, groups, self.head_dim) if groups > 1 else q
            out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=self.scaling)
        else:
            if groups > 1:
                keys = keys[:, :, None].expand(-1, -1, groups, -1, -1).reshape(batch, self.heads, -1, self.head_dim)
                values = values[:, :, None].expand(-1, -1, groups, -1, -1).reshape(batch, self.heads, -1, self.head_dim)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scaling)
        out = out.reshape(batch, -1, steps, self.head_dim).transpose(1, 2).contiguous()
        return out.reshape(batch, steps, -1).contiguous()


def _warpers(temperature: float, top_p: float) -> list:
    """The logits processors ``generate`` builds for these settings (the same classes)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    warpers = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _dynamic_cache(model: torch.nn.Module, cache: torch.Tensor, covered: int):
    from transformers import DynamicCache

    past = DynamicCache(config=_base(model).config)
    for i in range(cache.shape[0]):
        past.update(cache[i, 0, :, :, :covered].clone(), cache[i, 1, :, :, :covered].clone(), i)
    return past


@torch.no_grad()
def decode(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           temperature: float = 0.0, top_p: float = 1.0, eos_token_id: int | None = None, pad_token_id: int = 0,
           keep_logits: bool = False, keep_cache: bool = False) -> Decoded:
    """Greedy (``temperature == 0``) or sampled decoding of a left-padded batch, as
    ``model.generate(input_ids, attention_mask, max_new_tokens, do_sample=temperature > 0,
    temperature, top_p, top_k=None, pad_token_id, eos_token_id)`` would (the caller seeds torch)."""
    if max_new_tokens < 1:
        raise ConscienceError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    lm = _Model(model)
    batch, prompt = input_ids.shape
    total = prompt + max_new_tokens
    device = input_ids.device
    dtype = lm.embed.weight.dtype
    cache = torch.empty(len(lm.layers), 2, batch, lm.kv_heads, total, lm.head_dim, dtype=dtype, device=device)
    keep_states = keep_cache and batch == 1
    states = (torch.empty(len(lm.layers) + 1, total, lm.embed.weight.shape[1], dtype=dtype, device=device)
              if keep_states else None)
    slots = [(layer[0], layer[1]) for layer in cache]
    sequences = torch.full((batch, total), pad_token_id, dtype=input_ids.dtype, device=device)
    sequences[:, :prompt] = input_ids
    real = attention_mask.bool()
    padded = not bool(real.all())
    keys_mask = torch.ones(batch, total, dtype=torch.bool, device=device)
    keys_mask[:, :prompt] = real
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(~real, 0)
    mask = None
    if padded:  # causal and not padding, as transformers' sdpa_mask builds it
        causal = torch.ones(prompt, prompt, dtype=torch.bool, device=device).tril()
        mask = causal[None, None] & real[:, None, None, :]
    warpers = _warpers(temperature, top_p) if temperature > 0 else []
    unfinished = torch.ones(batch, dtype=torch.long, device=device)
    raw_logits = []
    logits = lm.prefill(input_ids, positions, mask, slots, states)
    step = 0
    while True:
        scores = logits.to(copy=True, dtype=torch.float32)
        if keep_logits:
            raw_logits.append(scores)
        length = prompt + step
        for warp in warpers:
            scores = warp(sequences[:, :length], scores)
        if temperature > 0:
            token = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            token = torch.argmax(scores, dim=-1)
        if eos_token_id is not None:
            token = token * unfinished + pad_token_id * (1 - unfinished)
            unfinished = unfinished & (token != eos_token_id).long()
        sequences[:, length] = token
        step += 1
        if step == max_new_tokens or (eos_token_id is not None and not bool(unfinished.any())):
            break
        positions = positions[:, -1:] + 1
        step_mask = keys_mask[:, None, None, :length + 1] if padded else None
        logits = lm.step(token, positions, step_mask, slots, length, states)
    covered = prompt + step - 1  # the last token was never run, as in generate
    past = _dynamic_cache(model, cache, covered) if keep_cache else None
    kept = states[:, :covered].clone() if states is not None else None
    return Decoded(sequences[:, :prompt + step], tuple(raw_logits) if keep_logits else None, past, kept)
