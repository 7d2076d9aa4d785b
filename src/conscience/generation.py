"""Chat rendering, batched generation, and splitting a draft into reasoning and answer.

:class:`Generator` is what the conscience step drafts and rewrites with: :class:`LocalGenerator`
(a loaded model, or a packed/int8 sampling copy from :mod:`conscience.packing`, optionally with
its adapter disabled) or ``conscience.serving.upstream_backend.UpstreamGenerator`` (an
OpenAI-compatible server). Sampling parameters travel with each call as a :class:`Sampling`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .decoding import Decoded, decode, decoder_choice, unsupported
from .errors import ConscienceError, PromptTooLongError
from .models import LoadedModel, frozen

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
_MARKED = re.compile(r"^\s*(?:reasoning|thoughts?)\s*:\s*(.*?)\n\s*(?:final answer|answer)\s*:\s*(.*)$", re.DOTALL | re.I)
_ZERO_WIDTH = "\u200b"


@dataclass
class PrefixCache:
    """The key/value cache of a finished generation and the token ids it covers, so a review
    that starts with the same tokens (the look-back verdict) only runs what is new; ``states``,
    when the decoder kept them, are those positions' hidden states ``(L+1, len(ids), H)``, so a
    verdict that reads the draft's own states does not run its tokens again either."""

    ids: list[int]
    past: object
    states: torch.Tensor | None = None


@dataclass
class Generation:
    """One generated turn. ``answer`` is ``text`` without its reasoning section."""

    text: str
    answer: str
    reasoning: str | None
    new_tokens: int
    seconds: float
    cache: PrefixCache | None = field(default=None, repr=False)
    logprobs: list[dict] | None = field(default=None, repr=False)  # OpenAI-style, when asked for


@dataclass(frozen=True)
class Sampling:
    """How one generation call samples: ``temperature == 0`` is greedy; ``seed`` reseeds torch
    before the call; ``top_logprobs`` (``None``: none) asks for OpenAI-style per-token log-probs."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    top_logprobs: int | None = None


class Generator(Protocol):
    """Writes one assistant turn per conversation. ``lm`` is the local model whose weights write
    (``None`` for a remote server); ``keep_cache`` asks a local model for its key/value cache."""

    lm: LoadedModel | None

    def generate(self, chats: list[list[dict]], sampling: Sampling, keep_cache: bool = False) -> list[Generation]: ...


class LocalGenerator:
    """A loaded model as a :class:`Generator` — the policy, or a sampling copy (see
    ``conscience.training.online.generation_copy``); ``frozen_weights`` disables its LoRA
    adapter while it writes (the frozen copy writing with the policy's module); ``decoder`` picks
    the decoding loop (``None``: ``$CONSCIENCE_DECODER`` or ``auto``, see :mod:`conscience.decoding`)."""

    def __init__(self, lm: LoadedModel, frozen_weights: bool = False, decoder: str | None = None):
        self.lm = lm
        self.frozen_weights = frozen_weights
        self.decoder = decoder

    @property
    def plain_weights(self) -> bool:
        """It writes with ``lm``'s own weights as they are (no adapter to disable)."""
        return not self.frozen_weights and not hasattr(self.lm.model, "peft_config")

    def generate(self, chats: list[list[dict]], sampling: Sampling, keep_cache: bool = False) -> list[Generation]:
        if sampling.top_logprobs is not None and len(chats) > 1:  # one at a time, each from its seed
            return [self.generate([chat], sampling)[0] for chat in chats]
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                      top_p=sampling.top_p, seed=sampling.seed, keep_cache=keep_cache,
                      top_logprobs=sampling.top_logprobs, decoder=self.decoder)
        if self.frozen_weights:
            with frozen(self.lm.model):
                return generate(self.lm, chats, **kwargs)
        return generate(self.lm, chats, **kwargs)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Separate a ``<think>…</think>`` block or a ``Reasoning: … Answer: …`` section."""
    think = _THINK.search(text)
    if think:
        answer = (text[: think.start()] + text[think.end():]).strip()
        return think.group(1).strip() or None, answer
    marked = _MARKED.match(text)
    if marked:
        return marked.group(1).strip() or None, marked.group(2).strip()
    return None, text.strip()


def neutralise(text: str, tokens: list[str]) -> str:
    """Break every occurrence of ``tokens`` (special tokens, quote markers) inside untrusted
    text with a zero-width space, so it can neither start a turn nor close its quote."""
    for token in sorted(set(tokens), key=len, reverse=True):
        if token and token in text:
            text = text.replace(token, token[0] + _ZERO_WIDTH + token[1:])
    return text


def special_tokens(lm: LoadedModel) -> list[str]:
    return [t for t in getattr(lm.tokenizer, "all_special_tokens", []) if t]


def render_chat(lm: LoadedModel, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Apply the tokenizer's chat template; message contents are neutralised first."""
    if not messages:
        raise ConscienceError("the conversation is empty")
    specials = special_tokens(lm)
    clean = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ConscienceError(f"message {i} must be an object with 'role' and 'content'")
        clean.append({"role": msg["role"], "content": neutralise(str(msg["content"]), specials)})
    if not any(m["role"] == "user" and m["content"].strip() for m in clean):
        raise ConscienceError("the prompt is empty: give at least one non-empty user message")
    return lm.tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(lm: LoadedModel, texts: list[str]) -> dict[str, torch.Tensor]:
    """Tokenise rendered prompts (left-padded batch); the template already holds BOS."""
    batch = lm.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(lm.device) for k, v in batch.items()}


def check_fits(lm: LoadedModel, n_prompt_tokens: int, max_new_tokens: int, what: str = "prompt") -> None:
    """Refuse a prompt that leaves no room for the answer (a clear error with token counts)."""
    window = lm.context_window
    if n_prompt_tokens + max_new_tokens > window:
        raise PromptTooLongError(
            f"the {what} has {n_prompt_tokens} tokens; with max_new_tokens={max_new_tokens} that exceeds "
            f"the model's context window of {window} tokens (shorten it by "
            f"{n_prompt_tokens + max_new_tokens - window} tokens or lower max_new_tokens)"
        )


def uses_static_decoder(lm: LoadedModel, decoder: str | None = None) -> bool:
    """Whether :func:`generate` runs :func:`conscience.decoding.decode` for ``lm`` (else transformers'
    ``generate``); ``decoder="static"`` on a model it cannot mirror is an error, never a silent fallback."""
    choice = decoder_choice(decoder)
    if choice == "transformers":
        return False
    reason = unsupported(lm.model)
    if reason and choice == "static":
        raise ConscienceError(f"the static decoder cannot run {lm.identity}: {reason} (use decoder auto or transformers)")
    return reason is None


def _transformers_generate(lm: LoadedModel, batch: dict, max_new_tokens: int, temperature: float, top_p: float,
                           keep_logits: bool):
    """transformers' ``generate`` with the project's settings (the fallback of the static decoder)."""
    sampling = temperature > 0
    out = lm.model.generate(
        **batch,
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=None,
        pad_token_id=lm.tokenizer.pad_token_id,
        eos_token_id=lm.tokenizer.eos_token_id,
        output_logits=keep_logits,
        return_dict_in_generate=True,
    )
    past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return Decoded(out.sequences, out.logits, past)


@torch.no_grad()
def generate(
    lm: LoadedModel,
    conversations: list[list[dict]],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    keep_cache: bool = False,
    top_logprobs: int | None = None,
    decoder: str | None = None,
) -> list[Generation]:
    """Generate one assistant turn for each conversation, in one left-padded batch.

    ``temperature == 0`` is greedy decoding. ``seed`` makes sampling reproducible.
    ``keep_cache`` (single conversation only) keeps the key/value cache in the result.
    ``top_logprobs`` (0 or more) fills each result's ``logprobs`` with OpenAI-style entries: the
    raw model log-prob of every generated token (the end-of-turn token included when it was
    generated) and that many alternatives. ``decoder`` picks the decoding loop (see
    :func:`conscience.decoding.decoder_choice`; the outputs are the same either way).
    """
    if max_new_tokens < 1:
        raise ConscienceError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    texts = [render_chat(lm, conv) for conv in conversations]
    batch = encode(lm, texts)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    for n in lengths:
        check_fits(lm, int(n), max_new_tokens)
    if seed is not None:
        torch.manual_seed(seed)
    keep_cache = keep_cache and len(conversations) == 1
    start = time.perf_counter()
    if uses_static_decoder(lm, decoder):
        out = decode(lm.model, batch["input_ids"], batch["attention_mask"], max_new_tokens, temperature, top_p,
                     lm.tokenizer.eos_token_id, lm.tokenizer.pad_token_id, keep_logits=top_logprobs is not None,
                     keep_cache=keep_cache)
    else:
        out = _transformers_generate(lm, batch, max_new_tokens, temperature, top_p, top_logprobs is not None)
    seconds = time.perf_counter() - start
    cache = None
    past = out.cache
    if keep_cache and past is not None:
        covered = past.get_seq_length()  # every token but the last one generated
        cache = PrefixCache(out.sequences[0, :covered].tolist(), past, out.states)
    new = out.sequences[:, batch["input_ids"].shape[1]:]
    results = []
    for i, row in enumerate(new):
        if top_logprobs is not None:  # every generated position, so each token meets its logits
            keep = row
        else:
            keep = row[row != lm.tokenizer.pad_token_id] if lm.tokenizer.pad_token_id != lm.tokenizer.eos_token_id else row
        eos = (keep == lm.tokenizer.eos_token_id).nonzero()
        n_tokens = int(eos[0, 0]) + 1 if len(eos) else len(keep)
        text = lm.tokenizer.decode(keep[:n_tokens], skip_special_tokens=True).strip()
        reasoning, answer = split_reasoning(text)
        gen = Generation(text, answer, reasoning, n_tokens, seconds / len(conversations), cache)
        if top_logprobs is not None:
            gen.logprobs = _token_logprobs(lm, out.logits, i, keep[:n_tokens].tolist(), top_logprobs)
        results.append(gen)
    return results


def _token_entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _token_logprobs(lm: LoadedModel, logits: tuple[torch.Tensor, ...], row: int, ids: list[int], top: int) -> list[dict]:
    """OpenAI-style ``logprobs.content`` of one generated row, from the per-step logits."""
    content = []
    for step, token_id in enumerate(ids):
        log_probs = torch.log_softmax(logits[step][row].float(), dim=-1)
        entry = _token_entry(lm.tokenizer, token_id, float(log_probs[token_id]))
        values, indices = log_probs.topk(min(top, log_probs.shape[-1])) if top else (torch.empty(0), torch.empty(0))
        entry["top_logprobs"] = [_token_entry(lm.tokenizer, int(i), float(v))
                                 for v, i in zip(values, indices, strict=True)]
        content.append(entry)
    return content
