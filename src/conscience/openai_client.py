"""The one client for OpenAI-compatible ``/v1`` servers, and the one reader of their top log-probs.

:class:`OpenAIClient` is used by the evaluation judge (``--judge-url``) and by the serve
``--upstream`` backend and reviewer. Errors name the endpoint with any ``user:password@``
redacted, and never carry the server's own body in their message (it may hold its secrets or
its users' data; a caller that shows it to its own user reads :attr:`EndpointError.detail`).
:func:`logprob_table` turns one position's ``logprobs.content[].top_logprobs`` list into a
token → log-prob table.
"""

from __future__ import annotations

import math
from typing import Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .errors import ConscienceError
from .redact import redact


class EndpointError(ConscienceError):
    """An OpenAI-compatible server failed or answered something unusable.

    ``reason`` is set when no answer came (the transport error, redacted); ``status`` is a
    non-200 HTTP status, with the first 300 characters of the body in ``detail``. ``public`` is
    the message without the endpoint (no host, port or path), for a server's own clients, who
    must not learn where its upstream lives.
    """

    def __init__(self, message: str, reason: str | None = None, status: int | None = None, detail: str = "",
                 public: str | None = None):
        super().__init__(message)
        self.reason, self.status, self.detail = reason, status, detail
        self.public = message if public is None else public


def v1_root(url: str) -> str:
    """``url`` with its path ending in ``/v1`` (no trailing slash); a query string is kept."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return urlunsplit(parts._replace(path=path if path.endswith("/v1") else path + "/v1", fragment=""))


class OpenAIClient:
    """A minimal synchronous client for an OpenAI-compatible API rooted at ``base`` (e.g.
    ``http://host:8000/v1``); safe to share between threads.

    ``label`` starts every error message ("upstream", "judge endpoint") and ``error`` is the
    :class:`EndpointError` subclass raised, so each caller keeps its own error type.
    """

    def __init__(self, base: str, api_key: str | None = None, model: str | None = None, timeout: float = 120.0,
                 keepalive: int = 20, label: str = "upstream", error: type[EndpointError] = EndpointError):
        import httpx

        # a query string (Azure's ?api-version=, a key given as ?api_key=) is sent with every call and
        # never printed: errors name the endpoint without it
        parts = urlsplit(base)
        self.base = urlunsplit(parts._replace(query="", fragment="")).rstrip("/")
        self.params = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.label, self.error = label, error
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
            reply = self.http.request(method, self.base + path, params=self.params or None, **kwargs)
        except httpx.HTTPError as exc:
            reason = f"{exc.__class__.__name__}: {redact(exc)}"
            raise self.error(f"{self.label} {where} failed: {reason}", reason=reason,
                             public=f"the {self.label} failed ({exc.__class__.__name__})") from None
        if reply.status_code != 200:
            # the server's own body is not in the message: it may hold its secrets or its users' data
            raise self.error(f"{self.label} {where} answered HTTP {reply.status_code}", status=reply.status_code,
                             detail=reply.text[:300], public=f"the {self.label} answered HTTP {reply.status_code}")
        try:
            return reply.json()
        except ValueError:
            raise self.error(f"{self.label} {where} answered something that is not JSON",
                             public=f"the {self.label} answered something that is not JSON") from None

    @property
    def model(self) -> str:
        if self._model is None:
            data = self._request("GET", "/models").get("data") or []
            if not data or not isinstance(data[0], dict) or "id" not in data[0]:
                raise self.error(f"{self.label} {redact(self.base)}/models lists no model; give --upstream-model",
                                 public=f"the {self.label} lists no model")
            self._model = str(data[0]["id"])
        return self._model

    def chat(self, messages: list[dict], **params) -> dict:
        """``POST /chat/completions`` with ``model``, ``messages`` and ``params``: the body, which
        has at least one choice."""
        body = self._request("POST", "/chat/completions", json={"model": self.model, "messages": messages, **params})
        choices = body.get("choices") if isinstance(body, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self.error(f"{self.label} chat completion has no choices")
        return body


def first_top_logprobs(body: dict) -> list[dict] | None:
    """``choices[0].logprobs.content[0].top_logprobs`` of a chat completion: ``[]`` when no
    position (or no list) is there, ``None`` when the body carries no log-probs at all."""
    try:
        content = body["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(content, list):
        return None
    if not content or not isinstance(content[0], dict):
        return []
    top = content[0].get("top_logprobs")
    return top if isinstance(top, list) else []


def _logaddexp(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    hi, lo = max(a, b), min(a, b)
    return hi if hi == -math.inf else hi + math.log1p(math.exp(lo - hi))


def logprob_table(top: Sequence[dict]) -> dict[str, float]:
    """token → log-prob from one position's ``top_logprobs`` entries (``{"token", "logprob"}``).

    Tokens are stripped of surrounding whitespace and those that are then the same (``"Yes"``,
    ``" Yes"``) are summed; empty tokens and entries that are not mappings are left out; a
    missing log-prob counts as ``-inf``.
    """
    table: dict[str, float] = {}
    for entry in top:
        if not isinstance(entry, dict):
            continue
        key = str(entry.get("token", "")).strip()
        if key:
            lp = float(entry.get("logprob", -math.inf))
            table[key] = _logaddexp(table[key], lp) if key in table else lp
    return table
