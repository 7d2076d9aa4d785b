"""The server's settings: one dataclass, validated when built."""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlsplit

from .redact import redact

SERVE_ACTIONS = ("revise", "block", "monitor")
ON_ERROR = ("closed", "open")
ON_UNRESOLVED = ("block", "release")
# The two answer words and their spelling variants (" Yes", "yes", "YES", ...) must all fit in
# the upstream's top log-probs, or a missing word turns the review into a failed one.
UPSTREAM_TOP_LOGPROBS_FLOOR = 10


def check_upstream_url(url: str) -> None:
    """Refuse an upstream URL that cannot work, or that carries a password, before serving."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValueError(f"upstream must be an http(s) URL such as http://127.0.0.1:8001/v1, got {redact(url)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"upstream must be an http(s) URL such as http://127.0.0.1:8001/v1, got {redact(url)!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("upstream must not carry user:password@ (it would be printed and sent as Basic auth): "
                         "give the key with --upstream-api-key-file or CONSCIENCE_UPSTREAM_API_KEY")


@dataclass
class ServeConfig:
    """How ``conscience serve`` listens, what it does with a verdict, and its limits.

    ``action`` (what the server does with a verdict): ``revise`` answers with the best reviewed
    candidate, ``block`` withholds a flagged draft (``finish_reason: content_filter``), ``monitor``
    releases the draft and only annotates.
    ``on_error``: ``closed`` withholds a draft whose review failed or timed out; ``open``
    releases it marked unchecked. ``on_unresolved`` (``revise``): when every candidate stays
    flagged, ``block`` withholds the answer like the ``block`` action, ``release`` sends the best one
    marked unresolved with the review's explanation.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    action: str = "revise"
    on_error: str = "closed"
    on_unresolved: str = "block"
    review_timeout: float = 30.0
    conscience: bool = True  # False serves the bare model (a baseline, or an upstream for others)
    model_name: str | None = None  # the id reported by /v1/models (default: the model spec)
    model_aliases: tuple[str, ...] = ()  # more names a request's `model` may use
    # cross-site protection: Host names besides the bind address, and origins allowed by CORS
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    # upstream: an OpenAI-compatible server that drafts and, through its log-probs, reviews
    upstream: str | None = None
    upstream_model: str | None = None
    upstream_api_key: str | None = None
    upstream_timeout: float = 120.0
    upstream_top_logprobs: int = 20
    # limits
    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    max_logprobs: int = 20  # the largest top_logprobs a request may ask for (vLLM's --max-logprobs)
    max_batch: int = 8  # concurrent requests drafted and reviewed together
    expose_trace: bool = False  # put the draft and alternatives into the `conscience` object
    # learning from traffic
    learn: bool = False
    learn_dir: str = "conscience-learn"
    learn_every: int = 32
    learn_steps: int = 20
    learn_lr: float = 1e-4
    learn_beta: float = 0.1
    learn_lora_r: int = 8
    learn_margin: float = 0.1
    learn_window: int = 256  # most recent pairs used by one update
    probe_size: int = 8

    def __post_init__(self) -> None:
        if self.action not in SERVE_ACTIONS:
            raise ValueError(f"action must be one of {list(SERVE_ACTIONS)}, got {self.action!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {self.on_error!r}")
        if self.on_unresolved not in ON_UNRESOLVED:
            raise ValueError(f"on_unresolved must be one of {list(ON_UNRESOLVED)}, got {self.on_unresolved!r}")
        self.model_aliases, self.allowed_hosts = tuple(self.model_aliases), tuple(self.allowed_hosts)
        self.cors_origins = tuple(o.rstrip("/") for o in self.cors_origins)
        if self.upstream is not None:
            check_upstream_url(self.upstream)
        if self.upstream_top_logprobs < UPSTREAM_TOP_LOGPROBS_FLOOR:
            raise ValueError(f"upstream_top_logprobs must be >= {UPSTREAM_TOP_LOGPROBS_FLOOR} (both answer words and "
                             f"their spellings must be listed), got {self.upstream_top_logprobs}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must lie in 1..65535, got {self.port}")
        for name in ("review_timeout", "upstream_timeout", "learn_lr", "learn_beta"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not math.isfinite(self.learn_margin) or not 0 <= self.learn_margin <= 1:
            raise ValueError(f"learn_margin must lie in [0, 1], got {self.learn_margin}")
        for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_batch", "learn_every",
                     "learn_steps", "learn_lora_r", "learn_window", "probe_size", "upstream_top_logprobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_logprobs < 0:
            raise ValueError(f"max_logprobs must be >= 0, got {self.max_logprobs}")
        for name in ("api_key", "upstream_api_key"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise ValueError(f"{name} must not be empty")
        if self.learn and self.upstream:
            raise ValueError("learning from traffic needs a local model: --learn cannot be combined with --upstream")
        if self.learn and self.action != "revise":
            raise ValueError("learning from traffic needs reviewed alternatives: use --action revise with --learn")
