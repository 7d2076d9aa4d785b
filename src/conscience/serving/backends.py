"""Where drafts come from and who reviews them: a local model, or an upstream server.

``LocalBackend`` wraps a loaded model and the :class:`~conscience.conscience.Conscience` built
on it. ``UpstreamBackend`` puts the conscience in front of any OpenAI-compatible server (vLLM,
another ``conscience serve``): the same conscience step runs with an :class:`UpstreamGenerator`,
so the upstream writes drafts and alternatives, and it is also the conscience —
:class:`~conscience.verdict.upstream.UpstreamReviewer` reads its verdict from the top log-probs
of the framing's two answer words. Each backend's ``generator`` also writes bare drafts when the
conscience is off.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..conscience import Conscience
from ..errors import ConscienceError
from ..generation import Generation, Generator, Sampling, render_chat, split_reasoning
from ..models import LoadedModel
from ..verdict.factory import make_reviewer, resolve_framings
from ..verdict.upstream import UpstreamError, UpstreamReviewer
from .redact import redact


# -- local model --------------------------------------------------------------------------------
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
    def generator(self) -> Generator:
        return self.conscience.drafter

    @property
    def context_window(self) -> int:
        return self.lm.context_window

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self.lm.tokenizer.encode(render_chat(self.lm, messages), add_special_tokens=False))

    def count_text_tokens(self, text: str) -> int:
        return len(self.lm.tokenizer.encode(text, add_special_tokens=False))


# -- upstream server ----------------------------------------------------------------------------
class UpstreamClient:
    """A minimal synchronous client for an OpenAI-compatible ``/v1`` API."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 120.0,
                 keepalive: int = 20):
        import httpx

        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # no cap on connections: the engine bounds the calls in flight, and a capped pool would make
        # every call wait behind abandoned (overrunning) reviews still holding their connections
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=keepalive)
        self.http = httpx.Client(headers=headers, timeout=timeout, limits=limits)
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


class UpstreamGenerator:
    """The upstream server as a :class:`~conscience.generation.Generator` (no local weights);
    requests run ``workers`` at a time (a single one in the caller's thread). The upstream samples
    with its own seed."""

    lm = None

    def __init__(self, client: UpstreamClient, workers: int = 8):
        self.client = client
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upstream-draft")

    def generate(self, chats: list[list[dict]], sampling: Sampling, keep_cache: bool = False) -> list[Generation]:
        if len(chats) == 1:  # the engine's upstream requests, each in its own thread: no shared pool to wait on
            return [self._one(chats[0], sampling)]
        return list(self.pool.map(lambda chat: self._one(chat, sampling), chats))

    def _one(self, chat: list[dict], sampling: Sampling) -> Generation:
        params: dict = dict(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature)
        if sampling.top_p != 1.0:
            params["top_p"] = sampling.top_p
        if sampling.top_logprobs is not None:
            params.update(logprobs=True, top_logprobs=sampling.top_logprobs)
        start = time.perf_counter()
        body = self.client.chat(chat, **params)
        choice = body["choices"][0]
        text = ((choice.get("message") or {}).get("content") or "").strip()
        reasoning, answer = split_reasoning(text)
        tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)
        logprobs = (choice.get("logprobs") or {}).get("content") if sampling.top_logprobs is not None else None
        return Generation(text, answer, reasoning, tokens, time.perf_counter() - start, logprobs=logprobs)


class UpstreamBackend:
    """An OpenAI-compatible server behind the conscience."""

    kind = "upstream"

    def __init__(self, client: UpstreamClient, conscience: Conscience, name: str | None = None):
        self.client = client
        self.conscience = conscience
        self._name = name

    @property
    def generator(self) -> Generator:
        return self.conscience.drafter

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


def build_backend(serve, cfg, lm: LoadedModel | None = None):
    """The backend a :class:`ServeConfig` and a :class:`ConscienceConfig` ask for."""
    from ..models import load_model

    max_rounds = cfg.max_rounds if serve.action == "revise" else 0  # block/monitor never revise
    common = dict(mode=cfg.mode, max_rounds=max_rounds, max_new_tokens=cfg.max_new_tokens,
                  temperature=cfg.temperature, seed=cfg.seed)
    if serve.upstream:
        if cfg.verdict not in ("auto", "verbal"):
            raise ConscienceError("an upstream conscience reads log-probs only: use --verdict verbal with --upstream")
        workers = serve.upstream_concurrency  # requests in flight at once (the engine's bound)
        client = UpstreamClient(serve.upstream, serve.upstream_api_key, serve.upstream_model, serve.upstream_timeout,
                                keepalive=workers)
        reviewer = UpstreamReviewer(client, resolve_framings(cfg), cfg.threshold, serve.upstream_top_logprobs,
                                    workers=workers)
        return UpstreamBackend(client, Conscience(UpstreamGenerator(client, workers), reviewer=reviewer, **common),
                               serve.model_name)
    if lm is None:  # any spec, the testing spec tiny / tiny:SEED included; load_model sets the threads
        lm = load_model(cfg.model, dtype=cfg.dtype, threads=cfg.threads, adapter=cfg.adapter)

    def make_conscience(model: LoadedModel) -> Conscience:
        return Conscience(model, reviewer=make_reviewer(cfg, model), **common)

    return LocalBackend(lm, make_conscience, serve.model_name or cfg.model)
