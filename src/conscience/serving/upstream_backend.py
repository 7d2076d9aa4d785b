"""An OpenAI-compatible server (vLLM, another ``conscience serve``) behind the conscience.

The same conscience step runs with an :class:`UpstreamGenerator`, so the upstream writes drafts
and alternatives, and it is also the conscience —
:class:`~conscience.verdict.upstream.UpstreamReviewer` reads its verdict from the top log-probs
of the framing's two answer words. Both talk to it through one
:class:`~conscience.openai_client.OpenAIClient`, which raises
:class:`~conscience.verdict.upstream.UpstreamError`.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from ..conscience import Conscience
from ..generation import Generation, Generator, Sampling, split_reasoning
from ..openai_client import OpenAIClient, v1_root
from ..verdict.upstream import UpstreamError


def upstream_client(url: str, api_key: str | None = None, model: str | None = None, timeout: float = 120.0,
                    keepalive: int = 20) -> OpenAIClient:
    """The client for an upstream at ``url`` (``/v1`` added when missing)."""
    return OpenAIClient(v1_root(url), api_key, model, timeout, keepalive=keepalive, label="upstream",
                        error=UpstreamError)


class UpstreamGenerator:
    """The upstream server as a :class:`~conscience.generation.Generator` (no local weights);
    requests run ``workers`` at a time (a single one in the caller's thread). The upstream samples
    with its own seed unless ``Sampling.seed`` is set, which it is given."""

    lm = None

    def __init__(self, client: OpenAIClient, workers: int = 8):
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
        if sampling.seed is not None:  # a request's own seed (the engine passes None otherwise)
            params["seed"] = sampling.seed
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

    def __init__(self, client: OpenAIClient, conscience: Conscience, name: str | None = None):
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

    max_token_chars = 4  # the characters one token covers at most, as count_tokens estimates it
