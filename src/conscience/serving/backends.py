"""Where drafts come from and who reviews them: a local model, or an upstream server.

``LocalBackend`` wraps a loaded model and the :class:`~conscience.conscience.Conscience` built
on it. ``UpstreamBackend`` puts the conscience in front of any OpenAI-compatible server (vLLM,
another ``conscience serve``): the upstream writes drafts and alternatives, and it is also the
conscience — :class:`~conscience.verdict.upstream.UpstreamReviewer` reads its verdict from the
top log-probs of the framing's two answer words.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from ..conscience import Conscience
from ..errors import ConscienceError
from ..generation import Generation, check_fits, encode, generate, render_chat, split_reasoning
from ..models import LoadedModel
from ..verdict.factory import make_reviewer, resolve_framings
from ..verdict.upstream import UpstreamError, UpstreamReviewer
from .redact import redact


@dataclass
class Draft:
    """A bare generation (conscience off) with its per-token log-probs when asked for."""

    generation: Generation
    logprobs: list[dict] | None = None


# -- local model --------------------------------------------------------------------------------
def tiny_spec_model(spec: str) -> LoadedModel | None:
    """The testing spec ``tiny`` / ``tiny:SEED``: a random-init model (no weights); else None."""
    if spec != "tiny" and not spec.startswith("tiny:"):
        return None
    from ..testing import tiny_model

    seed = spec.partition(":")[2]
    if seed and not seed.isdigit():
        raise ConscienceError(f"the testing spec is tiny or tiny:SEED, got {spec!r}")
    return tiny_model(int(seed or 0))


def _token_entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


@torch.no_grad()
def generate_with_logprobs(lm: LoadedModel, messages: list[dict], max_new_tokens: int, temperature: float,
                           top: int, seed: int | None) -> Draft:
    """One generation with OpenAI-style ``logprobs.content`` (raw model log-probs per token,
    the end-of-turn token included when it was generated)."""
    batch = encode(lm, [render_chat(lm, messages)])
    check_fits(lm, int(batch["input_ids"].shape[1]), max_new_tokens)
    if seed is not None:
        torch.manual_seed(seed)
    sampling = temperature > 0
    start = time.perf_counter()
    out = lm.model.generate(
        **batch, max_new_tokens=max_new_tokens, do_sample=sampling,
        temperature=temperature if sampling else None, top_p=None, top_k=None,
        pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=lm.tokenizer.eos_token_id,
        output_logits=True, return_dict_in_generate=True,
    )
    seconds = time.perf_counter() - start
    ids = out.sequences[0, batch["input_ids"].shape[1]:].tolist()
    content, kept = [], []
    for step, token_id in enumerate(ids):
        log_probs = torch.log_softmax(out.logits[step][0].float(), dim=-1)
        entry = _token_entry(lm.tokenizer, token_id, float(log_probs[token_id]))
        values, indices = log_probs.topk(min(top, log_probs.shape[-1])) if top else (torch.empty(0), torch.empty(0))
        entry["top_logprobs"] = [_token_entry(lm.tokenizer, int(i), float(v))
                                 for v, i in zip(values, indices, strict=True)]
        content.append(entry)
        kept.append(token_id)
        if token_id == lm.tokenizer.eos_token_id:
            break
    text = lm.tokenizer.decode(kept, skip_special_tokens=True).strip()
    reasoning, answer = split_reasoning(text)
    return Draft(Generation(text, answer, reasoning, len(kept), seconds), content)


class LocalBackend:
    """A local model; ``make_conscience(lm)`` builds the conscience (again after a swap)."""

    kind = "local"

    def __init__(self, lm: LoadedModel, make_conscience: Callable[[LoadedModel], Conscience], name: str | None = None):
        self.make_conscience = make_conscience
        self.name = name or lm.spec
        self.lm = lm
        self.conscience = make_conscience(lm)

    def swap(self, lm: LoadedModel) -> None:
        """Serve another model object (a new adapter); call only between jobs."""
        self.conscience = self.make_conscience(lm)
        self.lm = lm

    @property
    def context_window(self) -> int:
        return self.lm.context_window

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self.lm.tokenizer.encode(render_chat(self.lm, messages), add_special_tokens=False))

    def count_text_tokens(self, text: str) -> int:
        return len(self.lm.tokenizer.encode(text, add_special_tokens=False))

    def draft(self, chats: list[list[dict]], max_tokens: int, temperature: float, top_logprobs: int | None) -> list[Draft]:
        seed = self.conscience.seed
        if top_logprobs is not None:
            return [generate_with_logprobs(self.lm, c, max_tokens, temperature, top_logprobs, seed) for c in chats]
        return [Draft(g) for g in generate(self.lm, chats, max_new_tokens=max_tokens, temperature=temperature, seed=seed)]


# -- upstream server ----------------------------------------------------------------------------
class UpstreamClient:
    """A minimal synchronous client for an OpenAI-compatible ``/v1`` API."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 120.0):
        import httpx

        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)
        self._model = model

    def _request(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        where = redact(self.base + path)
        try:
            reply = self.http.request(method, self.base + path, **kwargs)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {where} failed: {exc.__class__.__name__}: {redact(exc)}") from None
        if reply.status_code != 200:
            # the upstream's own body is not passed on: it may hold its secrets or its users' data
            raise UpstreamError(f"upstream {where} answered HTTP {reply.status_code}")
        try:
            return reply.json()
        except ValueError:
            raise UpstreamError(f"upstream {where} answered something that is not JSON") from None

    @property
    def model(self) -> str:
        if self._model is None:
            data = self._request("GET", "/models").get("data") or []
            if not data or not isinstance(data[0], dict) or "id" not in data[0]:
                raise UpstreamError(f"upstream {redact(self.base)}/models lists no model; give --upstream-model")
            self._model = str(data[0]["id"])
        return self._model

    def chat(self, messages: list[dict], **params) -> dict:
        body = self._request("POST", "/chat/completions", json={"model": self.model, "messages": messages, **params})
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise UpstreamError("upstream chat completion has no choices")
        return body


class UpstreamConscience(Conscience):
    """The conscience loop with drafts and alternatives written by the upstream server."""

    def __init__(self, client: UpstreamClient, reviewer: UpstreamReviewer, workers: int = 8, **kwargs):
        super().__init__(None, reviewer=reviewer, **kwargs)  # no local policy: _generate goes upstream
        self.client = client
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upstream-draft")

    @property
    def _reuses_cache(self) -> bool:  # no local key/value cache: the upstream holds the model
        return False

    def _generate(self, lm, chats, frozen_weights: bool = False, **_) -> list[Generation]:
        return list(self.pool.map(lambda chat: upstream_generation(self.client, chat, self.max_new_tokens,
                                                                   self.temperature), chats))


def upstream_generation(client: UpstreamClient, chat: list[dict], max_tokens: int, temperature: float,
                        top_logprobs: int | None = None) -> Generation:
    params = dict(max_tokens=max_tokens, temperature=temperature)
    if top_logprobs is not None:
        params.update(logprobs=True, top_logprobs=top_logprobs)
    start = time.perf_counter()
    body = client.chat(chat, **params)
    choice = body["choices"][0]
    text = ((choice.get("message") or {}).get("content") or "").strip()
    reasoning, answer = split_reasoning(text)
    tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)
    gen = Generation(text, answer, reasoning, tokens, time.perf_counter() - start)
    gen.logprobs = (choice.get("logprobs") or {}).get("content")  # type: ignore[attr-defined]
    return gen


class UpstreamBackend:
    """An OpenAI-compatible server behind the conscience."""

    kind = "upstream"

    def __init__(self, client: UpstreamClient, conscience: UpstreamConscience, name: str | None = None):
        self.client = client
        self.conscience = conscience
        self._name = name

    @property
    def name(self) -> str:
        if self._name:
            return self._name
        try:
            return self.client.model
        except UpstreamError:  # not reachable yet: ask again next time
            return "upstream"

    context_window = None  # unknown here: the upstream applies its own limit

    def count_tokens(self, messages: list[dict]) -> int:
        """An estimate (4 characters a token): the upstream's tokenizer is not available here;
        the upstream applies its own context limit."""
        return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)

    def count_text_tokens(self, text: str) -> int:
        return len(text) // 4

    def draft(self, chats: list[list[dict]], max_tokens: int, temperature: float, top_logprobs: int | None) -> list[Draft]:
        gens = list(self.conscience.pool.map(
            lambda c: upstream_generation(self.client, c, max_tokens, temperature, top_logprobs), chats))
        return [Draft(g, getattr(g, "logprobs", None) if top_logprobs is not None else None) for g in gens]


def build_backend(serve, cfg, lm: LoadedModel | None = None):
    """The backend a :class:`ServeConfig` and a :class:`ConscienceConfig` ask for."""
    from ..models import load_model

    max_rounds = cfg.max_rounds if serve.action == "revise" else 0  # block/monitor never revise
    common = dict(mode=cfg.mode, max_rounds=max_rounds, max_new_tokens=cfg.max_new_tokens,
                  temperature=cfg.temperature, seed=cfg.seed)
    if serve.upstream:
        if cfg.verdict not in ("auto", "verbal"):
            raise ConscienceError("an upstream conscience reads log-probs only: use --verdict verbal with --upstream")
        client = UpstreamClient(serve.upstream, serve.upstream_api_key, serve.upstream_model, serve.upstream_timeout)
        reviewer = UpstreamReviewer(client, resolve_framings(cfg), cfg.threshold, serve.upstream_top_logprobs)
        return UpstreamBackend(client, UpstreamConscience(client, reviewer, **common), serve.model_name)
    if cfg.threads is not None:  # load_model sets it too, but the testing spec skips load_model
        torch.set_num_threads(max(1, cfg.threads))
    if lm is None:
        lm = tiny_spec_model(cfg.model) or load_model(cfg.model, dtype=cfg.dtype, threads=cfg.threads, adapter=cfg.adapter)

    def make_conscience(model: LoadedModel) -> Conscience:
        return Conscience(model, reviewer=make_reviewer(cfg, model), **common)

    return LocalBackend(lm, make_conscience, serve.model_name or cfg.model)
