"""The server's settings: one dataclass, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args
from urllib.parse import urlsplit

from ..config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, PROBABILITY, Bounds, bounded, check_fields
from ..conscience_config import ConscienceConfig
from ..errors import ConscienceError
from ..redact import redact

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
    Limits, each refused with a 4xx before the model is touched: ``max_body_bytes`` (413),
    ``max_prompt_tokens`` (400; a prompt longer in characters than that many of the tokenizer's
    longest tokens is refused before it is tokenised), ``max_queue`` — requests waiting for the
    model beyond those being answered; one more gets 429 with ``Retry-After`` (a client that goes
    away is removed from the queue at once) — and the read timeouts: ``header_timeout`` seconds
    for a request's headers (counted from the connection, or from the first byte of a
    keep-alive connection's next request; then 408 and the connection closes) and
    ``body_timeout`` seconds for its whole body (408).
    Each field's allowed values are declared on it and checked by ``check_fields``.
    """

    conscience: ConscienceConfig = field(default_factory=ConscienceConfig)
    """the conscience it serves (model, verdict, revision loop): the same ConscienceConfig as conscience ask"""
    host: str = "127.0.0.1"
    """the address to bind (127.0.0.1: this machine only)"""
    port: int = bounded(8000, PORT)
    """the port to listen on"""
    api_key: str | None = None
    """the key /v1/* requires as Authorization: Bearer KEY (None: no key); prefer --api-key-file or CONSCIENCE_API_KEY,
    which ps does not show"""
    action: ServeAction = "revise"
    """what the server does with a verdict: revise answers with the best reviewed candidate, block withholds a flagged
    draft, monitor releases the draft and only annotates it"""
    on_error: OnError = "closed"
    """a review that fails or times out: closed withholds the draft, open releases it marked unchecked"""
    on_unresolved: OnUnresolved = "block"
    """with action revise, when every candidate stays flagged: block withholds the answer, release sends the best one
    marked unresolved"""
    review_timeout: float = bounded(30.0, POSITIVE)
    """seconds a review may take before it counts as failed (see on_error)"""
    review: bool = True
    """false serves the bare model (a baseline, or an upstream for others)"""
    model_name: str | None = None
    """the id reported by /v1/models (None: the model spec)"""
    model_aliases: tuple[str, ...] = ()
    """more names a request's model may use (others get 404 model_not_found)"""
    # cross-site protection: Host names besides the bind address, and origins allowed by CORS
    allowed_hosts: tuple[str, ...] = ()
    """Host names accepted besides the bind address (against DNS rebinding)"""
    cors_origins: tuple[str, ...] = ()
    """origins allowed by CORS (requests from any other Origin are refused)"""
    # upstream: an OpenAI-compatible server that drafts and, through its log-probs, reviews
    upstream: str | None = None
    """an OpenAI-compatible server (http(s) URL, no user:password@) that drafts and, through its log-probs, reviews
    (None: a local model)"""
    upstream_model: str | None = None
    """the model name sent to the upstream"""
    upstream_api_key: str | None = None
    """the upstream's key (prefer --upstream-api-key-file or CONSCIENCE_UPSTREAM_API_KEY)"""
    upstream_timeout: float = bounded(120.0, POSITIVE)
    """seconds an upstream request may take"""
    upstream_top_logprobs: int = bounded(20, Bounds(UPSTREAM_TOP_LOGPROBS_FLOOR))
    """top log-probs asked of the upstream for a verdict; both answer words and their spelling variants must be among
    them"""
    # limits
    max_body_bytes: int = bounded(1_000_000, AT_LEAST_ONE)
    """the largest request body accepted (then 413)"""
    max_prompt_tokens: int = bounded(4096, AT_LEAST_ONE)
    """the longest prompt accepted, in tokens (then a 4xx naming both counts)"""
    max_tokens: int = bounded(1024, AT_LEAST_ONE)
    """the largest max_tokens a request may ask for"""
    max_logprobs: int = bounded(20, NON_NEGATIVE)
    """the largest top_logprobs a request may ask for (vLLM's --max-logprobs)"""
    max_batch: int = bounded(8, AT_LEAST_ONE)
    """concurrent requests drafted and reviewed together (local model)"""
    max_queue: int = bounded(256, AT_LEAST_ONE)
    """requests that may wait for the model beyond those being answered; one more gets 429 with Retry-After (the
    expected wait, from the queue and the mean latency); a client that disconnects leaves the queue at once"""
    header_timeout: float = bounded(10.0, POSITIVE)
    """seconds a client has to send a request's headers, from the connection or from the first byte of a kept-alive
    connection's next request (then 408 and the connection closes)"""
    body_timeout: float = bounded(30.0, POSITIVE)
    """seconds a client has to send a request's whole body once its headers are in (then 408)"""
    # upstream: requests drafted and reviewed at once, each on its own (the upstream batches them);
    # a review that overruns --review-timeout then delays only its own request
    upstream_concurrency: int = bounded(32, AT_LEAST_ONE)
    """with upstream: requests drafted and reviewed at once, each on its own (the upstream batches them), so an
    overrunning review delays only its own request"""
    expose_trace: bool = False
    """put the draft and alternatives into the response's conscience object"""
    # learning from traffic
    learn: bool = False
    """learn from traffic: keep each (alternative, flagged draft) pair and periodically train a LoRA update with the DPO
    term, swapped in only if a small EM probe does not get worse"""
    learn_dir: str = "conscience-learn"
    """where learned pairs (pairs.jsonl), adapters and state.json are kept"""
    learn_every: int = bounded(32, AT_LEAST_ONE)
    """train an update after every N new pairs"""
    learn_steps: int = bounded(20, AT_LEAST_ONE)
    """DPO steps of one update"""
    learn_lr: float = bounded(1e-4, POSITIVE)
    """learning rate of an update"""
    learn_beta: float = bounded(0.1, POSITIVE)
    """DPO β of an update"""
    learn_lora_r: int = bounded(8, AT_LEAST_ONE)
    """LoRA rank of an update"""
    learn_margin: float = bounded(0.1, PROBABILITY)
    """a pair is kept only when the alternative's score beats the draft's by this much"""
    learn_window: int = bounded(256, AT_LEAST_ONE)
    """the most recent pairs one update trains on"""
    probe_size: int = bounded(8, AT_LEAST_ONE)
    """EM probe questions asked of the serving and the updated model before a swap"""

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
        from ..verdict.factory import check_chosen_card  # the named card loads, before any model does

        try:
            check_chosen_card(self.conscience)
        except ConscienceError as exc:
            raise ValueError(f"conscience.{exc}") from None  # the nested key, dotted
