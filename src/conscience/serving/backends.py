"""Where drafts come from and who reviews them: a local model (:mod:`.local_backend`) or an
OpenAI-compatible server (:mod:`.upstream_backend`); :func:`build_backend` makes the one a
:class:`ServeConfig` asks for. Each backend's ``generator`` also writes bare drafts when the
conscience is off.
"""

from __future__ import annotations

from ..config import recall_target
from ..conscience import Conscience
from ..errors import ConscienceError
from ..models import LoadedModel
from ..verdict.factory import make_reviewer, resolve_framings
from ..verdict.upstream import UpstreamReviewer
from .local_backend import LocalBackend
from .upstream_backend import UpstreamBackend, UpstreamGenerator, upstream_client

__all__ = ["LocalBackend", "UpstreamBackend", "UpstreamGenerator", "build_backend"]


def build_backend(serve, cfg, lm: LoadedModel | None = None):
    """The backend a :class:`ServeConfig` and a :class:`ConscienceConfig` ask for."""
    from ..models import load_model

    max_rounds = cfg.max_rounds if serve.action == "revise" else 0  # block/monitor never revise
    common = dict(mode=cfg.mode, max_rounds=max_rounds, max_new_tokens=cfg.max_new_tokens,
                  temperature=cfg.temperature, seed=cfg.seed)
    if serve.upstream:
        if cfg.verdict not in ("auto", "verbal"):
            raise ConscienceError("an upstream conscience reads log-probs only: use --verdict verbal with --upstream")
        if recall_target(cfg.threshold) is not None:
            raise ConscienceError(f"threshold {cfg.threshold} needs a conscience card, and an upstream conscience "
                                  "has none: give a number")
        workers = serve.upstream_concurrency  # requests in flight at once (the engine's bound)
        client = upstream_client(serve.upstream, serve.upstream_api_key, serve.upstream_model, serve.upstream_timeout,
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
