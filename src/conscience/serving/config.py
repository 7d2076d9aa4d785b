"""The server's settings: one dataclass, validated when built."""

from __future__ import annotations

from dataclasses import dataclass

SERVE_MODES = ("revise", "block", "monitor")
ON_ERROR = ("closed", "open")


@dataclass
class ServeConfig:
    """How ``conscience serve`` listens, what it does with a verdict, and its limits.

    ``mode``: ``revise`` answers with the best reviewed candidate, ``block`` withholds a flagged
    draft (``finish_reason: content_filter``), ``monitor`` releases the draft and only annotates.
    ``on_error``: ``closed`` withholds a draft whose review failed or timed out; ``open``
    releases it marked unchecked.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    mode: str = "revise"
    on_error: str = "closed"
    review_timeout: float = 30.0
    conscience: bool = True  # False serves the bare model (a baseline, or an upstream for others)
    model_name: str | None = None  # the id reported by /v1/models (default: the model spec)
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
        if self.mode not in SERVE_MODES:
            raise ValueError(f"mode must be one of {list(SERVE_MODES)}, got {self.mode!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {self.on_error!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must lie in 1..65535, got {self.port}")
        for name in ("review_timeout", "upstream_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_batch", "learn_every",
                     "learn_steps", "learn_lora_r", "learn_window", "probe_size", "upstream_top_logprobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_logprobs < 0:
            raise ValueError(f"max_logprobs must be >= 0, got {self.max_logprobs}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty")
        if self.learn and self.upstream:
            raise ValueError("learning from traffic needs a local model: --learn cannot be combined with --upstream")
        if self.learn and self.mode != "revise":
            raise ValueError("learning from traffic needs reviewed alternatives: use --mode revise with --learn")
