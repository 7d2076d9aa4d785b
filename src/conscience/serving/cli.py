"""``conscience serve``: the OpenAI-compatible server (registered by ``conscience.cli``)."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConscienceError
from .config import ON_ERROR, SERVE_MODES, ServeConfig

_SERVE_KEYS = ("host", "port", "api_key", "on_error", "review_timeout", "model_name", "upstream", "upstream_model",
               "upstream_api_key", "upstream_timeout", "upstream_top_logprobs", "max_body_bytes",
               "max_prompt_tokens", "max_tokens", "max_logprobs", "max_batch", "learn_dir", "learn_every",
               "learn_steps", "learn_margin", "learn_lora_r", "probe_size")


def register(subparsers) -> None:
    from ..cli import add_conscience_options

    p = subparsers.add_parser(
        "serve", conflict_handler="resolve",
        help="an OpenAI-compatible chat server with the conscience in front of the model",
        description="Serve /v1/chat/completions with every draft reviewed by the model's frozen copy. "
                    "Streams start only after the review.")
    add_conscience_options(p)
    # --mode is the server's decision mode here; the conscience's use (chat/content/code) is --use.
    p.add_argument("--use", dest="mode", choices=["chat", "content", "code"],
                   help="what the model is used for (the drafting system prompt and framings)")
    s = p.add_argument_group("server")
    s.add_argument("--mode", dest="serve_mode", choices=SERVE_MODES, default="revise",
                   help="revise: answer with the best reviewed candidate; block: withhold flagged drafts "
                        "(finish_reason content_filter); monitor: only annotate")
    s.add_argument("--on-error", choices=ON_ERROR, default="closed",
                   help="closed: a failed or timed-out review withholds the draft; open: release it marked unchecked")
    s.add_argument("--review-timeout", type=float, default=30.0, help="seconds a review may take")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/*")
    s.add_argument("--no-conscience", dest="conscience", action="store_false",
                   help="serve the bare model (a baseline, or an upstream with logprobs for another server)")
    s.add_argument("--model-name", help="the model id reported to clients")
    s.add_argument("--expose-trace", action="store_true",
                   help="include the draft and the alternatives in each response's conscience object")
    s.add_argument("--upstream", help="URL of an OpenAI-compatible server that drafts and reviews (log-probs)")
    s.add_argument("--upstream-model", help="model id at the upstream (default: its first listed model)")
    s.add_argument("--upstream-api-key")
    s.add_argument("--upstream-timeout", type=float, default=120.0)
    s.add_argument("--upstream-top-logprobs", type=int, default=20, help="top log-probs asked for per review")
    s.add_argument("--max-body-bytes", type=int, default=1_000_000)
    s.add_argument("--max-prompt-tokens", type=int, default=4096)
    s.add_argument("--max-tokens", type=int, default=1024, help="the largest max_tokens a request may ask for")
    s.add_argument("--max-logprobs", type=int, default=20, help="the largest top_logprobs a request may ask for")
    s.add_argument("--max-batch", type=int, default=8, help="concurrent requests drafted and reviewed together")
    learn = p.add_argument_group("learning from traffic")
    learn.add_argument("--learn", action="store_true",
                       help="record preference pairs from flagged drafts and update a LoRA adapter in the background")
    learn.add_argument("--learn-dir", default="conscience-learn", help="pairs, adapters and state live here")
    learn.add_argument("--learn-every", type=int, default=32, help="pairs between two updates")
    learn.add_argument("--learn-steps", type=int, default=20)
    learn.add_argument("--learn-margin", type=float, default=0.1,
                       help="an alternative must beat the flagged draft's score by this much")
    learn.add_argument("--learn-lora-r", type=int, default=8)
    learn.add_argument("--probe-size", type=int, default=8, help="EM probe questions asked before a swap")
    p.set_defaults(handler=cmd_serve)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    values = {k: getattr(args, k) for k in _SERVE_KEYS if getattr(args, k, None) is not None}
    values.update(mode=args.serve_mode, conscience=args.conscience, expose_trace=args.expose_trace, learn=args.learn)
    try:
        return ServeConfig(**values)
    except ValueError as exc:
        raise ConscienceError(f"serve: {exc}") from None


def cmd_serve(args) -> int:
    from ..cli import conscience_config
    from .backends import build_backend

    cfg = serve_config(args)
    conscience_cfg = conscience_config(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConscienceError("serving needs FastAPI and uvicorn: pip install 'emergent-alignment[serve]'") from None
    from .app import create_app

    backend = build_backend(cfg, conscience_cfg)
    learner = None
    if cfg.learn:
        from .learn import build_learner

        learner = build_learner(cfg, conscience_cfg, backend)
    app = create_app(cfg, backend, learner)
    name = cfg.model_name or ("upstream model" if cfg.upstream else conscience_cfg.model)
    print(f"[conscience] serving {name} ({backend.kind}: {cfg.upstream or conscience_cfg.model}) on http://{cfg.host}:{cfg.port} "
          f"mode={cfg.mode} on_error={cfg.on_error} conscience={'on' if cfg.conscience else 'off'}",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    return 0
