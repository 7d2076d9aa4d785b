"""The server's settings: one dataclass, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args
from urllib.parse import urlsplit

from ..config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, PROBABILITY, Bounds, ConscienceConfig, bounded, check_fields
from .redact import redact

ServeAction = Literal["revise", "block", "monitor"]
OnError = Literal["closed", "open"]
OnUnresolved = Literal["block", "release"]
SERVE_ACTIONS, ON_ERROR, ON_UNRESOLVED = get_args(ServeAction), get_args(OnError), get_args(OnUnresolved)
# The two answer words and their spelling variants (" Yes", "yes", "YES", ...) must all fit in
# the upstream's top log-probs, or a missing word turns the review into a failed one.
UPSTREAM_TOP_LOGPROBS_FLOOR = 10
PORT = Bounds(1, 65535)


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

    ``conscience`` is the conscience it serves (model, verdict, revision loop): the same
    :class:`ConscienceConfig` as ``conscience ask``, a nested mapping in YAML and dotted keys as
    overrides (``conscience.threshold=0.4``).
    ``action`` (what the server does with a verdict): ``revise`` answers with the best reviewed
    candidate, ``block`` withholds a flagged draft (``finish_reason: content_filter``), ``monitor``
    releases the draft and only annotates. ``review: false`` serves the bare model (a baseline,
    or an upstream for others).
    ``on_error``: ``closed`` withholds a draft whose review failed or timed out; ``open``
    releases it marked unchecked. ``on_unresolved`` (``revise``): when every candidate stays
    flagged, ``block`` withholds the answer like the ``block`` action, ``release`` sends the best one
    marked unresolved with the review's explanation.
    Each field's allowed values are declared on it and checked by ``check_fields``.
    """

    conscience: ConscienceConfig = field(default_factory=ConscienceConfig)
    host: str = "127.0.0.1"
    port: int = bounded(8000, PORT)
    api_key: str | None = None
    action: ServeAction = "revise"
    on_error: OnError = "closed"
    on_unresolved: OnUnresolved = "block"
    review_timeout: float = bounded(30.0, POSITIVE)
    review: bool = True  # false serves the bare model (a baseline, or an upstream for others)
    model_name: str | None = None  # the id reported by /v1/models (default: the model spec)
    model_aliases: tuple[str, ...] = ()  # more names a request's `model` may use
    # cross-site protection: Host names besides the bind address, and origins allowed by CORS
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    # upstream: an OpenAI-compatible server that drafts and, through its log-probs, reviews
    upstream: str | None = None
    upstream_model: str | None = None
    upstream_api_key: str | None = None
    upstream_timeout: float = bounded(120.0, POSITIVE)
    upstream_top_logprobs: int = bounded(20, Bounds(UPSTREAM_TOP_LOGPROBS_FLOOR))
    # limits
    max_body_bytes: int = bounded(1_000_000, AT_LEAST_ONE)
    max_prompt_tokens: int = bounded(4096, AT_LEAST_ONE)
    max_tokens: int = bounded(1024, AT_LEAST_ONE)  # the largest max_tokens a request may ask for
    max_logprobs: int = bounded(20, NON_NEGATIVE)  # the largest top_logprobs a request may ask for (vLLM's --max-logprobs)
    max_batch: int = bounded(8, AT_LEAST_ONE)  # concurrent requests drafted and reviewed together
    # upstream: requests drafted and reviewed at once, each on its own (the upstream batches them);
    # a review that overruns --review-timeout then delays only its own request
    upstream_concurrency: int = bounded(32, AT_LEAST_ONE)
    expose_trace: bool = False  # put the draft and alternatives into the `conscience` object
    # learning from traffic
    learn: bool = False
    learn_dir: str = "conscience-learn"
    learn_every: int = bounded(32, AT_LEAST_ONE)
    learn_steps: int = bounded(20, AT_LEAST_ONE)
    learn_lr: float = bounded(1e-4, POSITIVE)
    learn_beta: float = bounded(0.1, POSITIVE)
    learn_lora_r: int = bounded(8, AT_LEAST_ONE)
    learn_margin: float = bounded(0.1, PROBABILITY)
    learn_window: int = bounded(256, AT_LEAST_ONE)  # most recent pairs used by one update
    probe_size: int = bounded(8, AT_LEAST_ONE)

    def __post_init__(self) -> None:
        self.model_aliases, self.allowed_hosts = tuple(self.model_aliases), tuple(self.allowed_hosts)
        self.cors_origins = tuple(o.rstrip("/") for o in self.cors_origins)
        check_fields(self)
        if self.upstream is not None:
            check_upstream_url(self.upstream)
        for name in ("api_key", "upstream_api_key"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise ValueError(f"{name} must not be empty")
        if self.learn and self.upstream:
            raise ValueError("learning from traffic needs a local model: --learn cannot be combined with --upstream")
        if self.learn and self.action != "revise":
            raise ValueError("learning from traffic needs reviewed alternatives: use --action revise with --learn")
